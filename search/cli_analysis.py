"""``memekit spectrum`` and ``memekit features``: spectral analysis of data and of expert features.

Thin commands: parse, call :func:`memekit.analysis.priors.spectral_report` or
:func:`memekit.analysis.features.feature_spectra`, write the artefacts (tables, npz, PNG plots and
the JSON specs that made them), print a short summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from memekit.analysis.data import load_images, resolve_device, to_model_range
from memekit.analysis.features import default_layers, feature_spectra
from memekit.analysis.priors import PriorError, SpectralReport, default_min_length, spectral_report
from memekit.space import Diffusion, MemeSpec, build_expert, save_spec
from memekit.space.errors import MemekitError, SpecError
from memekit.space.spec import SCHEDULES

from .cli_args import positive_int
from .cli_space import resolve_spec

DEFAULT_BASE = "meme-paper"


class OutputError(MemekitError):
    """The output folder cannot be used."""


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"output folder {str(out)!r} is not empty: pass --overwrite or choose another --out")
    out.mkdir(parents=True, exist_ok=True)


def _device(name: str) -> torch.device:
    return resolve_device(None if name == "auto" else name)


def _save_figure(fig, path: Path) -> None:
    fig.savefig(path, dpi=120)


# ---- memekit spectrum ------------------------------------------------------------------------------
def _spectrum_base(args: argparse.Namespace) -> MemeSpec:
    base = resolve_spec(args.base, args.resolution)
    if args.schedule is not None:
        base = dataclasses.replace(base, diffusion=dataclasses.replace(base.diffusion, schedule=args.schedule))
    return base


def _spectrum_config(args: argparse.Namespace, base: MemeSpec) -> dict:
    T = base.diffusion.timesteps
    min_length = args.min_length or default_min_length(T, args.n_experts)
    if args.n_experts * min_length > T:  # fail before the pass over the data
        raise PriorError(f"{args.n_experts} intervals of at least {min_length} steps do not fit in T = {T}: "
                         "lower --n-experts or --min-length")
    return {"command": "spectrum", "data": args.data, "resolution": args.resolution, "limit": args.limit,
            "base": args.base, "schedule": base.diffusion.schedule, "timesteps": T,
            "n_experts": args.n_experts,
            "min_length": min_length, "equal_mass": args.equal_mass,
            "batch_size": args.batch_size, "device": args.device, "out": str(args.out)}


def write_spectrum_report(report: SpectralReport, out: Path, config: dict) -> list[str]:
    """Write tables, arrays, plots and specs of ``report`` into ``out``; return the file names."""
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
             uniform_boundaries=np.array(report.uniform_boundaries), n_images=profile.n_images)
    save_spec(report.prior, out / "prior_spec.json")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    figures = {
        "snr_heatmap.png": plots.plot_spectrum_heatmap(report.spectrum, "snr", report.summary,
                                                       report.prior.boundaries),
        "power_heatmap.png": plots.plot_spectrum_heatmap(report.spectrum, "expected_power"),
        "data_power.png": plots.plot_data_power(report.spectrum, _sample_t(profile.timesteps)),
        "crossover.png": plots.plot_crossover(report.summary, report.prior.boundaries, report.uniform_boundaries),
        "band_fractions.png": plots.plot_band_fractions(report.summary),
    }
    for name, fig in figures.items():
        _save_figure(fig, out / name)
    return ["summary.csv", "priors.csv", "spectrum.npz", "prior_spec.json", "config.json", *figures]


def _sample_t(T: int) -> list[int]:
    return sorted({0, T // 10, T // 4, T // 2, 3 * T // 4, T - 1})


def _crossover_line(t: int, f_c: float, state: str) -> str:
    if state == "above":
        return f"  t = {t:>4}: f_c = f_max = {f_c:.4f}  (SNR >= 1 at every frequency)"
    if state == "below":
        return f"  t = {t:>4}: f_c = 0  (SNR < 1 at every frequency)"
    return f"  t = {t:>4}: f_c = {f_c:.4f}  (period {1 / f_c:.1f} px)"


def format_spectrum_summary(report: SpectralReport, source: str) -> str:
    """The short text ``memekit spectrum`` prints."""
    profile, spec = report.profile, report.prior
    f_c, state = profile.crossover()
    lines = [f"data {source}: {profile.n_images} images at {profile.resolution} px; schedule "
             f"{spec.diffusion.schedule}, T = {profile.timesteps}",
             "crossover frequency f_c(t) where SNR(t, f) = 1 (cycles/pixel, Nyquist 0.5):"]
    lines += [_crossover_line(t, f_c[t], state[t]) for t in _sample_t(profile.timesteps)]
    lines.append(f"proposed boundaries: {list(spec.boundaries)}")
    lines.append(f"uniform boundaries:  {list(report.uniform_boundaries)}")
    lines.append("spectral prior per expert (buried: share of each stage's frequency band below the noise, "
                 "averaged over the interval; density: draws of one step per 1,000 images of the expert, "
                 "meme-paper's in brackets):")
    for row, expert in zip(report.priors.itertuples(index=False), spec.experts, strict=True):
        n_stages = expert.n_stages
        buried = "/".join(f"{getattr(row, f'buried_stage{s}'):.2f}" for s in range(n_stages))
        shares = "/".join(f"{v:.3f}" for v in expert.effective_attention_share())
        lines.append(f"  expert {row.expert}: [{row.start}, {row.end})  buried {buried}  attention share {shares}  "
                     f"p = {row.p:g}  density {row.density_per_1k:.2f} ({row.paper_density_per_1k:.2f})")
    return "\n".join(lines)


def _spectrum(args: argparse.Namespace) -> int:
    base = _spectrum_base(args)
    config = _spectrum_config(args, base)
    if args.dry_run:
        print(json.dumps(config, indent=2))
        return 0
    out = Path(args.out)
    _prepare_out(out, args.overwrite)
    images = load_images(args.data, args.resolution, limit=args.limit, progress=True)
    report = spectral_report(images, base, args.n_experts, min_length=args.min_length, equal_mass=args.equal_mass,
                             batch_size=args.batch_size,
                             device=_device(args.device), progress=True)
    written = write_spectrum_report(report, out, config)
    print(format_spectrum_summary(report, args.data))
    print(f"wrote {out}/: {', '.join(written)}")
    return 0


# ---- memekit features ------------------------------------------------------------------------------
def _is_checkpoint(name: str) -> bool:
    return Path(name).is_dir() or name.endswith(".pt")


def _features_spec(args: argparse.Namespace) -> MemeSpec:
    if _is_checkpoint(args.model):
        from .checkpoint import checkpoint_spec, load_checkpoint

        spec = checkpoint_spec(load_checkpoint(args.model))
    else:
        spec = resolve_spec(args.model, args.resolution)
    if not 0 <= args.expert < spec.n_experts:
        raise SpecError(f"--expert {args.expert} is out of range: {args.model} has {spec.n_experts} expert(s)")
    T = spec.diffusion.timesteps
    if args.t is None:  # 0, T/4, T/2, 3T/4, T-1
        args.t = sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})
    bad = [t for t in args.t if not 0 <= t < T]
    if bad:
        raise SpecError(f"--t {bad[0]} is outside [0, {spec.diffusion.timesteps})")
    return spec


def _features(args: argparse.Namespace) -> int:
    spec = _features_spec(args)
    expert_spec = spec.experts[args.expert]
    config = {"command": "features", "model": args.model, "expert": args.expert, "data": args.data,
              "resolution": expert_spec.resolution, "limit": args.limit, "t": list(args.t),
              "layers": args.layers, "seed": args.seed, "device": args.device, "out": str(args.out),
              "weights": ("EMA weights of the checkpoint" if _is_checkpoint(args.model)
                          else "random init (torch.manual_seed(seed))")}
    if args.dry_run:
        print(json.dumps(config, indent=2))
        return 0
    out = Path(args.out)
    _prepare_out(out, args.overwrite)
    device = _device(args.device)
    torch.manual_seed(args.seed)
    if _is_checkpoint(args.model):
        from .sampling import load_model

        model = load_model(args.model, device=device)[0].experts[args.expert].eval()
    else:
        model = build_expert(expert_spec).to(device).eval()
    x0 = to_model_range(load_images(args.data, expert_spec.resolution, limit=args.limit, progress=True)).to(device)
    frame = feature_spectra(model, x0, Diffusion(spec.diffusion), args.t, layers=args.layers or None,
                            seed=args.seed, progress=True)
    _write_features(frame, spec, config, out)
    print(format_feature_summary(frame, args.layers or default_layers(model)))
    print(f"wrote {out}/: features.csv, spec.json, config.json, feature_spectra.png, feature_delta.png")
    return 0


def _write_features(frame, spec: MemeSpec, config: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from memekit.analysis import plots

    frame.to_csv(out / "features.csv", index=False)
    save_spec(spec, out / "spec.json")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _save_figure(plots.plot_feature_spectra(frame), out / "feature_spectra.png")
    _save_figure(plots.plot_feature_spectra(frame, "delta"), out / "feature_delta.png")


def format_feature_summary(frame, layers: list[str]) -> str:
    """Change of relative log amplitude vs the input at the highest frequency, per layer and t."""
    top = frame[frame["frequency"] == frame.groupby(["layer", "t"])["frequency"].transform("max")]
    table = top.pivot_table(index="layer", columns="t", values="delta", sort=False)
    table = table.reindex([name for name in layers if name in table.index])
    return "delta log amplitude at the highest frequency vs the input (negative = low-pass):\n" + \
        table.to_string(float_format=lambda v: f"{v:+.3f}")


# ---- registration ----------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, limit: int | None) -> None:
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--limit", type=positive_int, default=limit,
                   help=f"use only the first K images (default {limit or 'all'})")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("spectrum", help="spectra of noisy inputs, crossover frequencies, prior spec")
    p.add_argument("data", metavar="DATA", help="image folder, .npz, or builtin:shapes[:N]")
    p.add_argument("--resolution", type=positive_int, default=32, help="image size in pixels (default 32)")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="beta schedule (default: the base spec's)")
    p.add_argument("--n-experts", type=positive_int, default=4, help="number of intervals / experts (default 4)")
    p.add_argument("--min-length", type=positive_int, default=None,
                   help="minimum interval length in steps (default T // (4 N))")
    p.add_argument("--equal-mass", action="store_true",
                   help="intervals of equal training mass under the paper's density instead of the spectral "
                        "segmentation (shares and p_n still from the spectrum and the density)")
    p.add_argument("--base", default=DEFAULT_BASE, metavar="NAME|SPEC.json",
                   help=f"spec whose architecture and diffusion the prior reuses (default {DEFAULT_BASE})")
    p.add_argument("--batch-size", type=positive_int, default=256)
    _common(p, limit=None)
    p.set_defaults(run=_spectrum)

    p = subparsers.add_parser("features", help="relative log amplitude of an expert's feature maps per t")
    p.add_argument("model", metavar="MODEL_OR_PRESET", help="preset name, spec JSON (random init), or a run folder / checkpoint (EMA weights)")
    p.add_argument("--data", required=True, help="image folder, .npz, or builtin:shapes[:N]")
    p.add_argument("--expert", type=int, default=0, help="index of the expert to analyse (default 0)")
    p.add_argument("--t", type=int, nargs="+", default=None,
                   help="time-steps of x_t (default 0, T/4, T/2, 3T/4, T-1)")
    p.add_argument("--layers", nargs="+", default=None, help="module names (default: every U-Net block)")
    p.add_argument("--resolution", type=positive_int, default=None, help="image size (presets: 32 or 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init and of the noise")
    _common(p, limit=16)
    p.set_defaults(run=_features)
