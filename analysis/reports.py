"""Spectral analysis as files: what ``memekit spectrum`` and ``memekit features`` write and print.

:class:`SpectrumJob` says what to measure; :func:`run_spectrum` loads the data, computes the
:class:`~memekit.analysis.priors.SpectralReport` and writes its tables, arrays, plots and the prior
spec (:func:`write_spectrum_report`); :func:`format_spectrum_summary` is the text printed after
(also kept as ``prior_report.txt``, beside ``prior_report.json``: the data's slope, the generic prior
of that slope, how far the data's prior lies from it, the minimum interval length and its rule, and
the constraints that bind).
:func:`write_feature_report` and :func:`format_feature_summary` do the same for feature spectra
(:func:`memekit.analysis.features.feature_spectra`). Every folder also holds ``config.json``, the
settings that made it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from memekit.space import MemeSpec, save_spec
from memekit.space.files import atomic_write_json, atomic_write_text, prepare_output_dir
from memekit.space.presets import DEFAULT_BASE

from .data import SPLITS, DataError, data_shape, load_data, spec_for_data
from .device import resolve_device
from .priors import (
    DEFAULT_MIN_STEPS,
    DEFAULT_SAMPLING_STEPS,
    PriorError,
    SpectralReport,
    min_length_for_steps,
    spectral_report,
)
from .spectra import SpectralProfile, spectral_slope

SPECTRUM_FILES = ("summary.csv", "priors.csv", "spectrum.npz", "prior_spec.json", "config.json", "prior_report.json",
                  "prior_report.txt")
CHANNEL_FILES = ("channel_power.csv", "channel_crossover.csv", "channel_power.png")  # latent data only
FEATURE_FILES = ("features.csv", "spec.json", "config.json", "feature_spectra.png", "feature_delta.png")


def _save_figure(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=120)


# ---- spectra of the noisy inputs ------------------------------------------------------------------
@dataclass(frozen=True)
class SpectrumJob:
    """What ``memekit spectrum`` measures: ``data`` (images, or a latent data set) at ``resolution``
    (default: 32 px for images, the latents' own size) under the diffusion of the ``base`` spec (preset
    or JSON, built for the data's channels; ``schedule`` replaces its beta schedule), cut into
    ``n_experts`` intervals of at least ``min_length`` steps (default: the shortest interval that holds
    ``min_steps`` of ``sampling_steps`` DDIM steps wherever it lies,
    :func:`~memekit.analysis.priors.min_length_for_steps`), written into ``out``. ``split`` and
    ``limit`` choose the images (the first ``limit`` of the split)."""

    data: str
    out: str
    resolution: int | None = None
    schedule: str | None = None
    n_experts: int = 4
    min_length: int | None = None
    base: str = DEFAULT_BASE
    batch_size: int = 256
    limit: int | None = None
    device: str = "auto"
    overwrite: bool = False
    equal_mass: bool = False  # intervals of equal training mass under the paper's density
    split: str = "all"
    sampling_steps: int = DEFAULT_SAMPLING_STEPS  # DDIM steps of the trajectory (the study's --sampling-steps)
    min_steps: int = DEFAULT_MIN_STEPS  # sampling steps every interval holds at least

    @property
    def latent(self) -> bool:
        return data_shape(self.data).latent

    def base_spec(self) -> MemeSpec:
        shape = data_shape(self.data)
        base = spec_for_data(self.base, self.data, self.resolution or (None if shape.latent else 32))
        if self.schedule is not None:
            base = dataclasses.replace(base, diffusion=dataclasses.replace(base.diffusion, schedule=self.schedule))
        return base

    def config(self) -> dict[str, Any]:
        """The resolved settings (``config.json``, ``--dry-run``); a one-line error when the
        intervals cannot fit, before any pass over the data."""
        if self.split not in SPLITS:
            raise DataError(f"unknown split {self.split!r}: choose one of {', '.join(SPLITS)}")
        base = self.base_spec()
        T = base.diffusion.timesteps
        min_length = self.min_length or min_length_for_steps(T, self.sampling_steps, self.min_steps)
        if self.n_experts * min_length > T:
            raise PriorError(f"{self.n_experts} intervals of at least {min_length} steps do not fit in T = {T}: "
                             "lower --n-experts, --min-steps or --min-length")
        expert = base.experts[0]
        return {"command": "spectrum", "data": self.data, "latent": self.latent, "channels": expert.image_channels,
                "resolution": expert.resolution, "split": self.split, "limit": self.limit,
                "base": self.base, "schedule": base.diffusion.schedule, "timesteps": T,
                "n_experts": self.n_experts, "min_length": min_length,
                "min_length_rule": min_length_rule(T, self.sampling_steps, self.min_steps, self.min_length),
                "sampling_steps": self.sampling_steps, "min_steps": self.min_steps, "equal_mass": self.equal_mass,
                "batch_size": self.batch_size,
                "device": self.device, "out": str(self.out)}


def min_length_rule(timesteps: int, sampling_steps: int, min_steps: int, given: int | None = None) -> str:
    """The minimum interval length in words: given, or derived (:func:`min_length_for_steps`)."""
    if given:
        return "given (--min-length)"
    return (f"the shortest interval that holds {min_steps} of the {min(sampling_steps, timesteps)} DDIM steps "
            "wherever it lies (--min-steps, --sampling-steps)")


def run_spectrum(job: SpectrumJob, progress: bool = True) -> tuple[SpectralReport, list[str]]:
    """Measure ``job`` and write its files into ``job.out``; returns the report and the file names."""
    config = job.config()
    out = prepare_output_dir(job.out, job.overwrite)
    images = load_data(job.data, config["resolution"], limit=job.limit, split=job.split, progress=progress)
    report = spectral_report(images, job.base_spec(), job.n_experts, min_length=config["min_length"],
                             equal_mass=job.equal_mass, batch_size=job.batch_size, device=resolve_device(job.device),
                             progress=progress)
    return report, write_spectrum_report(report, out, config, per_channel=config["latent"])


def write_spectrum_report(report: SpectralReport, out: Path, config: dict, per_channel: bool = False) -> list[str]:
    """Write tables, arrays, plots and specs of ``report`` into ``out``; return the file names.
    ``per_channel``: also every channel's spectrum and crossover (:func:`write_channel_report`)."""
    import matplotlib

    matplotlib.use("Agg")
    from memekit.analysis import plots

    profile = report.profile
    f_c, _ = profile.crossover()
    report.summary.to_csv(out / "summary.csv", index=False)
    report.priors.to_csv(out / "priors.csv", index=False)
    np.savez(out / "spectrum.npz", frequency=profile.frequency, counts=profile.counts,
             data_power=profile.data_power, alpha_bar=profile.alpha_bar, expected_power=profile.expected_power,
             snr=profile.snr, crossover_frequency=f_c, boundaries=np.array(report.prior.boundaries),
             uniform_boundaries=np.array(report.uniform_boundaries), n_images=profile.n_images,
             channel_power=profile.channel_power, resolution=profile.resolution, corner_power=profile.corner_power,
             corner_counts=profile.corner_counts, channel_corner_power=profile.channel_corner_power)
    save_spec(report.prior, out / "prior_spec.json")
    atomic_write_json(out / "config.json", config)
    atomic_write_json(out / "prior_report.json", prior_report(report, config))
    atomic_write_text(out / "prior_report.txt", format_spectrum_summary(
        report, config.get("data", "?"), per_channel=per_channel, min_length_rule=config.get("min_length_rule")) + "\n")
    figures = {
        "snr_heatmap.png": plots.plot_spectrum_heatmap(report.spectrum, "snr", report.summary,
                                                       report.prior.boundaries),
        "power_heatmap.png": plots.plot_spectrum_heatmap(report.spectrum, "expected_power"),
        "data_power.png": plots.plot_data_power(report.spectrum, sample_timesteps(profile.timesteps)),
        "crossover.png": plots.plot_crossover(report.summary, report.prior.boundaries, report.uniform_boundaries),
        "band_fractions.png": plots.plot_band_fractions(report.summary),
    }
    for name, fig in figures.items():
        _save_figure(fig, out / name)
    return [*SPECTRUM_FILES, *figures, *(write_channel_report(profile, out) if per_channel else [])]


def channel_frames(profile: SpectralProfile) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per channel: ``channel, frequency, data_power`` (C x K rows) and ``t, channel,
    crossover_frequency`` at :func:`sample_timesteps` (its own ``f_c(t)``)."""
    C, K = profile.channel_power.shape
    power = pd.DataFrame({"channel": np.repeat(np.arange(C), K), "frequency": np.tile(profile.frequency, C),
                          "data_power": profile.channel_power.ravel()})
    ts = sample_timesteps(profile.timesteps)
    f_c = profile.channel_crossover()[:, ts]  # (C, len(ts))
    crossover = pd.DataFrame({"t": np.tile(ts, C), "channel": np.repeat(np.arange(C), len(ts)),
                              "crossover_frequency": f_c.ravel()})
    return power, crossover


def write_channel_report(profile: SpectralProfile, out: Path) -> list[str]:
    """``channel_power.csv``, ``channel_crossover.csv`` and ``channel_power.png`` into ``out``."""
    from memekit.analysis import plots

    power, crossover = channel_frames(profile)
    power.to_csv(out / "channel_power.csv", index=False)
    crossover.to_csv(out / "channel_crossover.csv", index=False)
    _save_figure(plots.plot_channel_power(power, profile.frequency, profile.data_power), out / "channel_power.png")
    return list(CHANNEL_FILES)


def sample_timesteps(T: int) -> list[int]:
    """The time-steps the summary and the data-power plot show: 0, T/10, T/4, T/2, 3T/4, T-1."""
    return sorted({0, T // 10, T // 4, T // 2, 3 * T // 4, T - 1})


def _crossover_line(t: int, f_c: float, state: str) -> str:
    if state == "above":
        return f"  t = {t:>4}: f_c = f_max = {f_c:.4f}  (SNR >= 1 at every frequency)"
    if state == "below":
        return f"  t = {t:>4}: f_c = 0  (SNR < 1 at every frequency)"
    return f"  t = {t:>4}: f_c = {f_c:.4f}  (period {1 / f_c:.1f} px)"


def _channel_lines(profile: SpectralProfile) -> list[str]:
    """Per-channel spectral slopes and crossover frequencies: min / median / max over channels."""
    slopes = [spectral_slope(p, profile.frequency) for p in profile.channel_power]
    f_c = profile.channel_crossover()
    lines = [f"spectral slope a of P_0(f) ~ f^-a: {spectral_slope(profile.data_power, profile.frequency):.2f} for the "
             f"channel mean; per channel min / median / max {min(slopes):.2f} / {np.median(slopes):.2f} / "
             f"{max(slopes):.2f}",
             f"per-channel crossover f_c(t), min / median / max over the {len(slopes)} channels (cycles/pixel):"]
    return lines + [f"  t = {t:>4}: {f_c[:, t].min():.4f} / {np.median(f_c[:, t]):.4f} / {f_c[:, t].max():.4f}"
                    for t in sample_timesteps(profile.timesteps)]


def format_spectrum_summary(report: SpectralReport, source: str, per_channel: bool = False,
                            min_length_rule: str | None = None) -> str:
    """The short text ``memekit spectrum`` prints (``per_channel``: with the channels' spread;
    ``min_length_rule``: how the minimum interval length was set, :func:`min_length_rule`)."""
    profile, spec = report.profile, report.prior
    f_c, state = profile.crossover()
    channels = profile.channel_power.shape[0]
    what = f"latents of {channels} channels at {profile.resolution} x {profile.resolution}" if per_channel else \
        f"images at {profile.resolution} px"
    lines = [f"data {source}: {profile.n_images} {what}; schedule {spec.diffusion.schedule}, T = {profile.timesteps}",
             "crossover frequency f_c(t) where SNR(t, f) = 1 (cycles/pixel, Nyquist 0.5):"]
    lines += [_crossover_line(t, f_c[t], state[t]) for t in sample_timesteps(profile.timesteps)]
    if per_channel:
        lines += _channel_lines(profile)
    lines.append(f"proposed boundaries: {list(spec.boundaries)}")
    lines.append(f"uniform boundaries:  {list(report.uniform_boundaries)}")
    lines.append("spectral prior per expert (buried: share of each stage's frequency band below the noise, "
                 "averaged over the interval; p: share of the expert's training inside its interval; density: draws "
                 "of one step per 1,000 images of the expert; meme-paper's in brackets):")
    for row, expert in zip(report.priors.itertuples(index=False), spec.experts, strict=True):
        n_stages = expert.n_stages
        buried = "/".join(f"{getattr(row, f'buried_stage{s}'):.2f}" for s in range(n_stages))
        shares = "/".join(f"{v:.3f}" for v in expert.effective_attention_share())
        lines.append(f"  expert {row.expert}: [{row.start}, {row.end})  buried {buried}  attention share {shares}  "
                     f"p = {row.p:g} ({row.paper_p:g})  "
                     f"density {row.density_per_1k:.2f} ({row.paper_density_per_1k:.2f})")
    return "\n".join(lines + constraint_lines(report, min_length_rule) + generic_lines(report))


def _shares_text(spec: MemeSpec) -> str:
    return " · ".join("/".join(f"{v:g}" for v in e.attention_share) for e in spec.experts)


def constraint_lines(report: SpectralReport, rule: str | None = None) -> list[str]:
    """The minimum interval length (and ``rule``, how it was set) and every binding constraint."""
    lines = [f"minimum interval length: {report.min_length} steps" + (f", {rule}" if rule else "")]
    if not report.constraints:
        return lines + ["binding constraints: none (the rules alone set the prior)"]
    return lines + ["binding constraints:"] + [f"  - {c.text}" for c in report.constraints]


def generic_lines(report: SpectralReport) -> list[str]:
    """The data's slope, the generic prior of that slope and how far the data's prior lies from it."""
    if report.generic is None or report.distance is None:
        return []
    profile, generic, d = report.profile, report.generic, report.distance
    channels = profile.channel_power.shape[0] or "the same"
    moves = "/".join(f"{b:+d}" for b in d.boundaries)
    return [f"spectral slope of the data: P_0(f) ~ f^-{profile.slope:.3f} "
            f"(least squares over rings 1..{len(profile.frequency)})",
            f"generic prior (a synthetic image set with P(f) ~ f^-{profile.slope:.3f}, the data's total power, "
            f"{channels} channels): boundaries {list(generic.boundaries)}, p = "
            f"{'/'.join(f'{v:g}' for v in generic.soft_assignment)}, shares {_shares_text(generic)}",
            f"your data moved the cuts by {d.boundary_steps} steps from the generic prior "
            f"(interior boundaries {moves}); "
            f"p_n by at most {d.max_p:.3g}; attention shares in {d.shares_changed} of "
            f"{sum(len(row) for row in d.shares)} (expert, stage) cells, by at most {d.max_share:g}"]


def prior_report(report: SpectralReport, config: dict[str, Any]) -> dict[str, Any]:
    """``prior_report.json``: the slope, the data's and the generic prior, their distance, the
    minimum interval length with its rule and the binding constraints."""
    def summary(spec: MemeSpec) -> dict[str, Any]:
        return {"boundaries": list(spec.boundaries), "soft_assignment": list(spec.soft_assignment),
                "attention_shares": [list(e.attention_share) for e in spec.experts]}

    d = report.distance
    out: dict[str, Any] = {
        "data": config.get("data"), "resolution": report.profile.resolution, "n_images": report.profile.n_images,
        "slope": report.profile.slope,
        "slope_fit": f"least squares of log P_0 on log f over rings 1..{len(report.profile.frequency)}",
        "min_length": report.min_length, "min_length_rule": config.get("min_length_rule"),
        "prior": summary(report.prior),
        "constraints": [{**c._asdict(), "text": c.text} for c in report.constraints]}
    if report.generic is not None and d is not None:
        out["generic_prior"] = {**summary(report.generic), "spec": report.generic.to_dict()}
        out["distance"] = {"boundaries": list(d.boundaries), "boundary_steps": d.boundary_steps,
                           "p": [round(v, 6) for v in d.p], "max_p": round(d.max_p, 6),
                           "shares": [list(row) for row in d.shares], "max_share": d.max_share,
                           "shares_changed": d.shares_changed}
    return out


# ---- two spectrum folders side by side (pixels vs latents) ----------------------------------------
def read_profile(folder: str | Path) -> SpectralProfile:
    """The :class:`SpectralProfile` that ``memekit spectrum`` saved in ``folder/spectrum.npz`` (folders
    written before the channels and corner rings were saved give empty ones)."""
    with np.load(Path(folder) / "spectrum.npz") as data:
        frequency = data["frequency"]

        def saved(key: str, empty: np.ndarray) -> np.ndarray:
            return data[key] if key in data.files else empty

        return SpectralProfile(frequency, data["counts"], data["data_power"], data["alpha_bar"],
                               int(data["n_images"]), int(round(1 / frequency[0])),
                               corner_power=saved("corner_power", np.zeros(0)),
                               corner_counts=saved("corner_counts", np.zeros(0, dtype=np.int64)),
                               channel_power=saved("channel_power", np.zeros((0, 0))),
                               channel_corner_power=saved("channel_corner_power", np.zeros((0, 0))))


def comparison_frames(profiles: dict[str, SpectralProfile]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spectra of several data sets on common axes. ``power``: ``name, k`` (cycles per image, ``f R``),
    ``frequency``, ``data_power`` and the channels' ``channel_min`` / ``channel_max``; ``crossover``:
    ``name, t, crossover_frequency`` (cycles per pixel of the model's grid), ``cycles_per_image`` and
    ``fraction_of_nyquist`` (``f_c / 0.5``)."""
    power, crossover = [], []
    for name, p in profiles.items():
        channels = p.channel_power if p.channel_power.size else p.data_power[None]
        power.append(pd.DataFrame({"name": name, "k": p.frequency * p.resolution, "frequency": p.frequency,
                                   "data_power": p.data_power, "channel_min": channels.min(axis=0),
                                   "channel_max": channels.max(axis=0)}))
        f_c, _ = p.crossover()
        crossover.append(pd.DataFrame({"name": name, "t": np.arange(p.timesteps), "crossover_frequency": f_c,
                                       "cycles_per_image": f_c * p.resolution, "fraction_of_nyquist": f_c / 0.5}))
    return pd.concat(power, ignore_index=True), pd.concat(crossover, ignore_index=True)


# ---- spectra of an expert's features -------------------------------------------------------------
def write_feature_report(frame: pd.DataFrame, spec: MemeSpec, config: dict, out: Path) -> list[str]:
    """Write the feature spectra table, the spec, the config and two plots into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    from memekit.analysis import plots

    frame.to_csv(out / "features.csv", index=False)
    save_spec(spec, out / "spec.json")
    atomic_write_json(out / "config.json", config)
    _save_figure(plots.plot_feature_spectra(frame), out / "feature_spectra.png")
    _save_figure(plots.plot_feature_spectra(frame, "delta"), out / "feature_delta.png")
    return list(FEATURE_FILES)


def format_feature_summary(frame: pd.DataFrame, layers: list[str]) -> str:
    """Change of relative log amplitude vs the input at the highest frequency, per layer and t."""
    top = frame[frame["frequency"] == frame.groupby(["layer", "t"])["frequency"].transform("max")]
    table = top.pivot_table(index="layer", columns="t", values="delta", sort=False)
    table = table.reindex([name for name in layers if name in table.index])
    return "delta log amplitude at the highest frequency vs the input (negative = low-pass):\n" + \
        table.to_string(float_format=lambda v: f"{v:+.3f}")
