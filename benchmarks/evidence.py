"""Evidence driver: MEME's table at small scale on one backbone, with error bars that decide.

Every model is trained with the SAME image budget on the SAME backbone family (the presets
rebuilt by :func:`memekit.space.presets.backbone_presets`, the spectral prior on that backbone,
and the best 1-3 specs of a study run in a space on it), then scored: FID and KID of ``n``
DDIM samples against the data's reference split over 3 sampling seeds, the log-spectral
distance, the validation loss per quarter of [0, T), params, MACs per step, and (``--timing``)
sampling and training img/s measured side by side in one process.

    # CPU (2 cores, UTKFace 32 px): calibrate the budget on single-small, then the table
    python benchmarks/evidence.py --profile cpu32 --calibrate --budgets 25000,50000,100000,150000 --max-minutes 120
    python benchmarks/evidence.py --profile cpu32 --export benchmarks/utk32bw_study --max-minutes 170
    python benchmarks/evidence.py --profile cpu32 --export benchmarks/utk32bw_study --timing  # every row, one run
    python benchmarks/evidence.py --profile cpu32 --report          # table, claims, Pareto plot, grids
    # one row
    python benchmarks/evidence.py --profile cpu32 --models meme-paper

Every finished piece (a model trained, a sampling seed scored, a grid drawn) is saved to
``benchmarks/evidence_PROFILE.json`` at once, so the driver resumes where it stopped;
``--max-minutes`` stops it cleanly after a piece or at a training checkpoint. ``--train-seeds
NAME=K`` trains K seeds of a row whose single-seed difference does not decide. Run folders
(weights) go to ``runs/evidence_PROFILE`` and are never committed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from memekit.space import ExpertSpec, MemeSpec, load_spec, spec_cost
from memekit.space.errors import MemekitError
from memekit.space.presets import backbone_presets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]
UTKFACE = REPO.parent / "shared" / "data" / "utkface" / "crop_part1"
BASELINES = ("single-large", "single-small", "multi-same", "meme-paper")


@dataclass(frozen=True)
class Profile:
    backbone: ExpertSpec
    images: int  # default training budget per model, all experts together
    batch: int
    lr: float
    warmup_images: int
    n: int  # samples per sampling seed
    steps: int  # DDIM steps
    sampling_seeds: int
    mixed_precision: str
    preconditioning: str
    data: str


CPU32 = ExpertSpec(resolution=32, base_width=16, channel_mult=(1, 2, 2), blocks_per_stage=(1, 1, 1),
                   attention_share=(0.0, 1.0, 1.0), head_dim=4, attention_pool=(2, 1, 1))
PROFILES = {
    "cpu32": Profile(CPU32, 100_000, 32, 1e-3, 1000, 1000, 25, 3, "no", "wiener", str(UTKFACE)),
    "gpu64": Profile(ExpertSpec(resolution=64, base_width=32, channel_mult=(1, 2, 2, 2), blocks_per_stage=(2, 2, 2, 2),
                                attention_share=(0.0, 1.0, 1.0, 1.0), head_dim=8, attention_pool=(4, 2, 1, 1)),
                     200_000, 128, 2e-4, 10_000, 2000, 50, 3, "bf16", "wiener", str(UTKFACE)),
}


# ---- models --------------------------------------------------------------------------------------
def model_specs(profile: Profile, data: str, export: Path | None, searched: int = 3) -> dict[str, MemeSpec]:
    """The baselines on the profile's backbone, the spectral prior on it and the first ``searched``
    specs of a study export (which must be on the same backbone), all with the profile's
    preconditioning measured from the training split."""
    from memekit.analysis.data import load_images
    from memekit.analysis.linear import STATS_IMAGES, preconditioned
    from memekit.analysis.priors import prior_spec

    images = load_images(data, profile.backbone.resolution, split="train", limit=STATS_IMAGES, progress=False)
    presets = backbone_presets(profile.backbone)
    specs = {name: presets[name] for name in BASELINES}
    specs["spectral-prior"] = prior_spec(images, 4, presets["meme-paper"])
    if export is not None:  # export.json lists the chosen trials best quality first
        manifest = json.loads((export / "export.json").read_text())
        study = _study_folder(export, manifest)
        for entry in manifest["trials"][:searched]:
            spec = load_spec(export / entry["file"])
            _check_backbone(spec, profile.backbone, entry["file"])
            specs[f"searched-{study}-{Path(entry['file']).stem}"] = spec
    diffusion = preconditioned(specs["single-small"].diffusion, profile.preconditioning, images)
    return {name: dataclasses.replace(spec, diffusion=diffusion) for name, spec in specs.items()}


def _study_folder(export: Path, manifest: dict) -> str:
    """The study's run folder name, which names the searched rows: read from the export's storage
    when that is a local file, so a copy of the export elsewhere (``benchmarks/utk32bw_study``)
    names its rows as the original does; else the folder the export sits in."""
    storage = str(manifest.get("storage", ""))
    path = storage.removeprefix("sqlite:///")
    return Path(path).parent.name if path and "://" not in path else export.resolve().parent.name


def _check_backbone(spec: MemeSpec, backbone: ExpertSpec, where: str) -> None:
    for e in spec.experts:
        if dataclasses.replace(e, attention_share=backbone.attention_share, base_width=backbone.base_width) != backbone:
            raise MemekitError(f"{where} is not on the profile's backbone ({backbone.n_stages} stages, head_dim "
                               f"{backbone.head_dim}): run the study in a space on it (cpu32b for cpu32)")


# ---- results file --------------------------------------------------------------------------------
def load_results(path: Path) -> dict:
    results = json.loads(path.read_text()) if path.is_file() else {"models": {}, "calibration": {}}
    if not isinstance(results, dict):
        raise MemekitError(f"{path} holds results of the earlier driver (a list): move it away or pass --results")
    return results


def save_results(path: Path, results: dict, base: dict) -> None:
    """Write this process's changes to ``results`` atomically, keeping what another driver process
    saved meanwhile: a calibration and a table run (or two table runs on different ``--models``) may
    share one file, each owning its entries (a model, a budget). ``base`` is ``results`` as this
    process last read or wrote it; only entries that differ from it are written (then it is updated)."""
    import fcntl

    from memekit.space.files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = load_results(path)
        for key, value in results.items():
            old = base.get(key)
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                old = old if isinstance(old, dict) else {}
                merged[key].update({k: v for k, v in value.items() if old.get(k) != v})
            elif value != old:
                merged[key] = value
        atomic_write_text(path, json.dumps(merged, indent=1) + "\n")
    base.clear()
    base.update(json.loads(json.dumps(results)))


# ---- pieces ----------------------------------------------------------------------------------------
def train_config(profile: Profile, data: str, images: int, seed: int, device: str):
    from memekit.search.train import TrainConfig

    return TrainConfig(data=data, images=images, batch=profile.batch, lr=profile.lr,
                       warmup_images=profile.warmup_images, seed=seed, val_images=256, val_every=0, sample_every=0,
                       sample_count=16, sample_steps=profile.steps, checkpoint_every=max(1, images // profile.batch // 20),
                       keep_last=1, mixed_precision=profile.mixed_precision, device=device)


def train_piece(spec: MemeSpec, config, run_dir: Path, deadline: float | None) -> dict:
    """Train (resumable); the validation figures and budget actually seen."""
    from memekit.search.train import train

    # a longer budget extends a finished run (calibration); the driver makes every config itself
    result = train(spec, config, run_dir, progress=True, deadline=deadline, allow_config_change=True,
                   say=lambda line: print(line, flush=True))  # says what it resumed
    keys = ("val_loss", "val_loss_quarters", "val_rel", "val_rel_quarters", "val_rel_per_expert")
    return {"images": result.images_seen, "images_per_expert": result.images_per_expert,
            **{k: result.val.get(k) for k in keys}}


def sample_piece(run_dir: Path, data: str, profile: Profile, seed: int, device: str, weights: str | None) -> dict:
    """FID / KID / LSD of one sampling seed's ``n`` images against the reference split."""
    from memekit.analysis.fid import data_source
    from memekit.search.metrics import sample_metrics

    m = sample_metrics(run_dir, data_source(data), n=profile.n, steps=profile.steps, seeds=1, first_seed=seed,
                       device=device, weights=weights)
    return {**m.per_seed[0], "n": m.n, "n_ref": m.n_ref, "weights": m.weights_label, "protocol": m.protocol}


def grid_piece(run_dir: Path, name: str, out: Path, steps: int, device: str) -> str:
    """64 samples (seed 0), upscaled 3x, as ``OUT/grid-NAME.png``; returns the file name."""
    from memekit.search.sampling import load_model, sample_images

    model, spec, _ = load_model(run_dir, device=device)
    images = sample_images(model, spec, 64, steps=steps, seed=0, device=device, batch=64, progress=False)
    return save_grid(images, out / f"grid-{name}.png")


def save_grid(images: np.ndarray, path: Path, scale: int = 3) -> str:
    from memekit.search.sampling import save_image_grid

    big = images.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest upscaling, so a reader sees pixels
    save_image_grid(big, path, nrow=8)
    return path.name


def real_grid(data: str, resolution: int, out: Path) -> str:
    from memekit.analysis.data import load_images

    images = load_images(data, resolution, split="reference", limit=64, progress=False)
    return save_grid(images, out / "grid-real.png")


def run_model(name: str, spec: MemeSpec, seed: int, ctx: dict) -> bool:
    """Every piece of one (model, training seed): False when the deadline stopped it."""
    from memekit.search.train import TrainingPaused

    profile, results = ctx["profile"], ctx["results"]
    entry = results["models"].setdefault(name, {"spec": spec.to_dict(), "runs": {}})
    run = entry["runs"].setdefault(str(seed), {"samples": {}})
    run_dir = ctx["work"] / f"{name}-seed{seed}"
    if name == "single-small" and seed == 0:
        reuse_calibration(ctx, run_dir)
    if run.get("trained", {}).get("images") != ctx["images"]:
        try:
            run["trained"] = train_piece(spec, train_config(profile, ctx["data"], ctx["images"], seed, ctx["device"]),
                                         run_dir, ctx["deadline"])
        except TrainingPaused as paused:
            print(f"{name} seed {seed}: {paused}")
            return False
        run["samples"] = {}  # samples of an earlier budget no longer describe this run
        run.pop("grid", None)
        ctx["save"]()
    for s in range(profile.sampling_seeds):
        if str(s) in run["samples"]:
            continue
        if _late(ctx):
            return False
        print(f"{name} seed {seed}: sampling seed {s}, {profile.n:,} samples and their FID / KID / LSD", flush=True)
        started = time.time()
        run["samples"][str(s)] = sample_piece(run_dir, ctx["data"], profile, s, ctx["device"], ctx["weights"])
        ctx["save"]()
        m = run["samples"][str(s)]
        print(f"{name} seed {seed}: sampling seed {s}: FID {m['fid']:.1f}, KID {m['kid_mean']:.4f} "
              f"({time.time() - started:.0f} s)", flush=True)
    if seed == 0 and "grid" not in run and not _late(ctx):
        run["grid"] = grid_piece(run_dir, name, ctx["figures"], profile.steps, ctx["device"])
        ctx["save"]()
    return not _late(ctx)


def reuse_calibration(ctx: dict, run_dir: Path) -> None:
    """The calibration run IS the ``single-small`` row (same spec, seed and config) when it stopped at
    the table's budget: copy it instead of training it again (nothing when ``run_dir`` exists)."""
    import shutil

    from memekit.search.checkpoint import checkpoint_step, latest_checkpoint

    source = ctx["work"] / "calibration-single-small"
    config = source / "config.json"
    if run_dir.exists() or not config.is_file() or json.loads(config.read_text()).get("images") != ctx["images"]:
        return
    last = latest_checkpoint(source)
    if last is None or checkpoint_step(last) < ctx["images"] // ctx["profile"].batch:
        return  # the calibration has not reached the budget yet
    shutil.copytree(source, run_dir)
    print(f"single-small seed 0: the calibration run at {ctx['images']:,} images, copied from {source}")


def _late(ctx: dict) -> bool:
    return ctx["deadline"] is not None and time.time() > ctx["deadline"]


# ---- calibration: single-small along its training -------------------------------------------------------
def calibrate(ctx: dict, budgets: list[int]) -> None:
    """Train ``single-small`` through ``budgets`` (one run, extended), scoring FID / KID (one sampling
    seed) and drawing a grid at each, so the budget where samples are faces and the metrics stop
    falling fast can be read off the curve."""
    from memekit.search.train import TrainingPaused

    profile, results = ctx["profile"], ctx["results"]
    spec = model_specs(profile, ctx["data"], None)["single-small"]
    run_dir = ctx["work"] / "calibration-single-small"
    for budget in sorted(budgets):
        key = str(budget)
        if key in results["calibration"]:
            continue
        try:
            trained = train_piece(spec, train_config(profile, ctx["data"], budget, 0, ctx["device"]), run_dir,
                                  ctx["deadline"])
        except TrainingPaused as paused:
            print(f"calibration at {budget:,} images: {paused}")
            return
        scored = sample_piece(run_dir, ctx["data"], profile, 0, ctx["device"], ctx["weights"])
        grid = grid_piece(run_dir, f"calibration-{budget}", ctx["figures"], profile.steps, ctx["device"])
        results["calibration"][key] = {**trained, **scored, "grid": grid}
        ctx["save"]()
        print(f"calibration {budget:,} images: FID {scored['fid']:.1f}, KID {scored['kid_mean']:.4f}", flush=True)
        if _late(ctx):
            return


def calibration_figure(results: dict) -> Figure:
    """FID, KID and validation loss of the calibration run against its training budget (a bare
    matplotlib Figure: never shown or saved here)."""
    from matplotlib.figure import Figure

    rows = sorted((int(k), v) for k, v in results["calibration"].items())
    x = [k / 1000 for k, _ in rows]
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    for ax, key, label in zip(axes, ("fid", "kid_mean", "val_loss"), ("FID", "KID", "validation loss"), strict=True):
        ax.plot(x, [v[key] for _, v in rows], "o-")
        ax.set(xlabel="training images (thousands)", ylabel=label)
        ax.grid(alpha=0.3)
    n = rows[-1][1].get("n", "?")
    fig.suptitle(f"single-small on the profile's backbone: metrics along training (n = {n}, one sampling seed)")
    fig.tight_layout()
    return fig


def calibration_plot(results: dict, path: Path) -> None:
    calibration_figure(results).savefig(path, dpi=90)


# ---- side-by-side throughput ------------------------------------------------------------------------
def timing(ctx: dict, specs: dict[str, MemeSpec], repeats: int = 3, n: int = 100) -> dict:
    """DDIM sampling img/s (one batch of ``n``, ``steps`` steps) and training img/s (20 steps of the profile's
    batch, after 2 warm-up steps) of every model, interleaved over ``repeats`` rounds in this one process (medians), so the
    ratios share the machine's state. The weights are freshly initialised (speed does not depend on
    their values), so every row of the table is timed in one run, trained yet or not."""
    import torch

    from memekit.search.sampling import sample_images
    from memekit.search.train import Trainer
    from memekit.space import MultiExpert

    profile, rates = ctx["profile"], {name: {"sample": [], "train": []} for name in specs}
    for round_ in range(repeats):
        for name, spec in specs.items():
            model = MultiExpert(spec).to(ctx["device"]).eval()
            start = time.perf_counter()
            sample_images(model, spec, n, steps=profile.steps, seed=0, device=ctx["device"], batch=n, progress=False)
            rates[name]["sample"].append(n / (time.perf_counter() - start))
            trainer = Trainer(spec, train_config(profile, ctx["data"], 22 * profile.batch, 0, ctx["device"]),
                              ctx["work"] / "timing" / name, progress=False)
            trainer.load_data()
            for _ in range(2):  # warm-up
                trainer.train_step()
            start = time.perf_counter()
            for _ in range(20):
                trainer.train_step()
            rates[name]["train"].append(20 * profile.batch / (time.perf_counter() - start))
            print(f"timing round {round_ + 1}/{repeats}, {name}: sampling {rates[name]['sample'][-1]:.2f} img/s, "
                  f"training {rates[name]['train'][-1]:.2f} img/s", flush=True)
    return {name: {"sampling_images_per_s": float(np.median(r["sample"])),
                   "train_images_per_s": float(np.median(r["train"])), "repeats": repeats,
                   "threads": torch.get_num_threads(), "sampled": n, "sampling_rounds": r["sample"],
                   "train_rounds": r["train"]} for name, r in rates.items()}


# ---- statistics and the report ------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    """A model's metric over its runs: mean, standard error and what the error covers."""

    mean: float
    se: float
    basis: str  # "k training seeds" or "S sampling seeds (training noise not included)"


def scored_runs(entry: dict, seeds: set[str] | None = None) -> dict[str, dict]:
    """Training seed -> its sampling seeds' metrics, for the scored runs (of ``seeds``, when given)."""
    return {seed: run["samples"] for seed, run in entry["runs"].items()
            if run["samples"] and (seeds is None or seed in seeds)}


def shared_sampling(*entries: dict, seeds: set[str] | None = None) -> set[str]:
    """The sampling seeds that every scored run (of ``seeds``) of every entry has. Sampling seeds are shared
    between models (the same seed draws the same noise, and its KID is lower or higher for every model
    alike), so means over training seeds compare like with like only on one sampling-seed set."""
    sets = [set(samples) for entry in entries for samples in scored_runs(entry, seeds).values()]
    return set.intersection(*sets) if sets else set()


def sampling_label(sampling: set[str]) -> str:
    """``sampling seed 0`` / ``sampling seeds 0, 1, 2``."""
    return f"sampling seed{'s' * (len(sampling) > 1)} {', '.join(sorted(sampling))}"


def score(entry: dict, key: str, seeds: set[str] | None = None, sampling: set[str] | None = None) -> Score:
    """Mean over training seeds (all scored ones, or ``seeds``) of the mean over sampling seeds (all, or
    ``sampling``); the SE from training seeds when there are several, else from the sampling seeds (which
    leaves out training noise: said so)."""
    runs = [[v[key] for s, v in samples.items() if sampling is None or s in sampling]
            for samples in scored_runs(entry, seeds).values()]
    runs = [values for values in runs if values]
    if not runs:
        return Score(math.nan, math.nan, "not scored")
    means = [float(np.mean(values)) for values in runs]
    if len(runs) > 1:
        on = "" if sampling is None else f" on {sampling_label(sampling)}"
        return Score(float(np.mean(means)), float(np.std(means, ddof=1) / math.sqrt(len(means))),
                     f"{len(means)} training seeds{on}")
    values = runs[0]
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return Score(means[0], se, f"{len(values)} sampling seeds, one training seed (training noise not included)")


def training_sd(models: dict, key: str) -> tuple[float, list[str], int]:
    """The training-seed SD of one run's score, pooled over the rows with >= 2 scored training seeds (each
    row's runs on the sampling seeds they share; sum of (k - 1) s^2 over sum of (k - 1), assuming every row
    has the same training noise), the rows it came from and its degrees of freedom; NaN when no row has two."""
    pooled, rows, dof = 0.0, [], 0
    for name, entry in models.items():
        sampling, runs = shared_sampling(entry), scored_runs(entry)
        if len(runs) < 2 or not sampling:
            continue
        means = [float(np.mean([samples[s][key] for s in sampling])) for samples in runs.values()]
        if not all(math.isfinite(m) for m in means):
            continue
        pooled += (len(means) - 1) * float(np.var(means, ddof=1))
        rows.append(name)
        dof += len(means) - 1
    return (math.sqrt(pooled / dof) if dof else math.nan), rows, dof


@dataclass(frozen=True)
class Difference:
    """``a - b`` with its SE, the degrees of freedom behind the SE (None: sampling seeds only) and what
    the SE covers."""

    diff: float
    se: float
    dof: int | None
    basis: str

    @property
    def decided(self) -> bool:
        """|a - b| > 2 SE (house style 18); never when the SE is unknown (NaN compares False)."""
        return bool(abs(self.diff) > 2 * self.se)


def compare(models: dict, a: str, b: str, key: str) -> Difference:
    """``a - b`` on the training seeds both rows have (house style 18: the same seed set) and the sampling
    seeds all those runs share. With several shared training seeds the SE comes from their spread; with one
    it is the larger of the sampling-seed SE and sqrt(2) x the pooled training-seed SD, so one run's training
    noise is never left out once another row has measured it. Rows with no training seed in common are not
    compared (NaN)."""
    common = set(scored_runs(models[a])) & set(scored_runs(models[b]))
    if not common:
        return Difference(math.nan, math.nan, None, "no training seed in common")
    sampling = shared_sampling(models[a], models[b], seeds=common)
    sa, sb = score(models[a], key, common, sampling), score(models[b], key, common, sampling)
    diff, se = sa.mean - sb.mean, math.hypot(sa.se, sb.se)
    on = sampling_label(sampling)
    if len(common) > 1:
        return Difference(diff, se, 2 * len(common) - 2, f"training seeds {', '.join(sorted(common))} of both, on {on}")
    sd, rows, dof = training_sd(models, key)
    if not math.isnan(sd) and (math.isnan(se) or math.sqrt(2) * sd > se):
        return Difference(diff, math.sqrt(2) * sd, dof, f"one training seed each (seed {min(common)}, {on}); sqrt(2) x "
                          f"the training-seed SD pooled over {', '.join(rows)} (each on its runs' shared sampling seeds)")
    return Difference(diff, se, None, f"{on} of training seed {min(common)} (training noise not included)")


def speed_up(timing_: dict, name: str) -> Score:
    """``name``'s sampling img/s over single-large's: the mean and SE of the per-round ratios when the
    rounds were saved (each round times every model back to back), else the ratio of the medians."""
    a, b = timing_[name], timing_["single-large"]
    if len(a.get("sampling_rounds", [])) > 1 and len(a["sampling_rounds"]) == len(b.get("sampling_rounds", [])):
        ratios = np.array(a["sampling_rounds"]) / np.array(b["sampling_rounds"])
        return Score(float(ratios.mean()), float(ratios.std(ddof=1) / math.sqrt(len(ratios))), f"{len(ratios)} rounds")
    return Score(a["sampling_images_per_s"] / b["sampling_images_per_s"], math.nan, "medians")


def claims(results: dict) -> list[str]:
    """MEME's three claims, each as a KID difference on the rows' shared training seeds, with its SE, its
    degrees of freedom and a verdict at 2 SE (house style 18; with few degrees of freedom the two-sided 95 %
    t cutoff is printed beside it, as it is stricter); plus the spectral prior against the paper's hand-set
    configuration (issue 11)."""
    from scipy.stats import t as student_t

    models, timing_ = results["models"], results.get("timing", {})
    kid = [name for name, entry in models.items() if scored_runs(entry)]  # scored models, in the table's order
    macs = {name: spec_cost(MemeSpec.from_dict(entry["spec"]), 50).mean_macs_per_step for name, entry in models.items()}
    lines = []

    def line(label: str, a: str, b: str, verdict) -> str:
        d = compare(models, a, b, "kid_mean")
        if math.isnan(d.se):
            return f"- {label}: KID {a} - {b} = {d.diff:+.4f}, SE unknown ({d.basis}): undecided"
        strict = "" if d.dof is None else (f", {d.dof} dof: |diff| / SE = {abs(d.diff) / d.se:.1f} against the "
                                           f"95 % t cutoff {student_t.ppf(0.975, d.dof):.2f}")
        return (f"- {label}: KID {a} - {b} = {d.diff:+.4f} +- {d.se:.4f} (SE over {d.basis}{strict}; "
                f"{'beyond' if d.decided else 'within'} 2 SE): {verdict(d)}")

    if {"meme-paper", "multi-same"} <= set(kid):
        lines.append(line("(b) meme-paper vs multi-same", "meme-paper", "multi-same",
                          lambda d: "met (not worse beyond 2 SE)" if d.diff <= 2 * d.se else "not met (worse beyond 2 SE)"))
    for name in (n for n in kid if n.startswith("searched-") and "meme-paper" in kid):
        ratio = macs["meme-paper"] / macs[name]
        lines.append(line(f"(c) {name} vs meme-paper ({ratio:.2f}x fewer MACs per step)", name, "meme-paper",
                          lambda d, r=ratio: "dominates" if (d.diff < -2 * d.se and r >= 1.0)
                          or (not d.decided and r >= 1.3) else "does not dominate"))
    if "single-large" in kid and "single-large" in timing_:
        for name in (n for n in kid if len(models[n]["spec"]["experts"]) == 4 and n in timing_):
            speed = speed_up(timing_, name)
            spread = "" if math.isnan(speed.se) else f" +- {speed.se:.2f} over {speed.basis}"
            lines.append(line(f"(a) {name}: {speed.mean:.2f}x{spread} of single-large's sampling img/s", name,
                              "single-large", lambda d, s=speed.mean: "met" if s >= 2.5 and d.diff <= 2 * d.se
                              else "not met"))
    if {"spectral-prior", "meme-paper"} <= set(kid):
        lines.append(line("spectral prior vs the paper's hand-set configuration", "spectral-prior", "meme-paper",
                          lambda d: ("better" if d.diff < 0 else "worse") if d.decided else "not separated"))
    return lines


def table(results: dict) -> list[str]:
    """One row per model. FID / KID / LSD of training seed 0 (every row has it): mean +- SE over its sampling
    seeds; then KID and FID over all scored training seeds, on the sampling seeds their runs share (mean +- SE
    over training seeds: what the claims use), with the number of training seeds; costs and speeds."""
    timing_ = results.get("timing", {})
    lines = ["| model | params | MMACs/step | FID, seed 0 | KID, seed 0 | LSD (dB) | training seeds | "
             "KID over training seeds | FID over training seeds | val loss, seed 0 (q1/q2/q3/q4) | "
             "sample img/s | train img/s | speed-up vs single-large |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results["models"].items():
        spec = MemeSpec.from_dict(entry["spec"])
        cost = spec_cost(spec, 50)
        fid, kid, lsd = (score(entry, k, seeds={"0"}) for k in ("fid", "kid_mean", "lsd"))
        runs = scored_runs(entry)
        over = "- | -"
        if len(runs) > 1:
            sampling = shared_sampling(entry)
            k, f = score(entry, "kid_mean", sampling=sampling), score(entry, "fid", sampling=sampling)
            on = sampling_label(sampling)
            over = f"{k.mean:.4f} +- {k.se:.4f} ({on}) | {f.mean:.1f} +- {f.se:.1f}"
        trained = entry["runs"]["0"].get("trained", {})
        quarters = "/".join(f"{q:.4f}" for q in trained.get("val_loss_quarters") or [])
        t = timing_.get(name, {})
        speed = "-"
        if t and "single-large" in timing_:
            ratio = speed_up(timing_, name)
            speed = f"{ratio.mean:.2f}x" + ("" if math.isnan(ratio.se) or name == "single-large" else f" +- {ratio.se:.2f}")
        scored = (f"{fid.mean:.1f} +- {fid.se:.1f} | {kid.mean:.4f} +- {kid.se:.4f} | {lsd.mean:.2f}"
                  if not math.isnan(fid.mean) else "not scored yet | - | -")
        val = trained.get("val_loss")
        lines.append(f"| {name} | {cost.params / 1e6:.2f}M | {cost.mean_macs_per_step / 1e6:.1f} | {scored} | "
                     f"{len(runs) or '-'} | {over} | {'-' if val is None else f'{val:.4f}'} ({quarters}) | "
                     f"{_rate(t, 'sampling_images_per_s')} | {_rate(t, 'train_images_per_s')} | {speed} |")
    return lines


def _rate(timed: dict, key: str) -> str:
    return f"{timed[key]:.1f}" if key in timed else "-"


def pareto_figure(results: dict) -> Figure:
    """FID and KID of training seed 0 (mean +- SE over its sampling seeds, the table's seed-0 columns)
    against trajectory GMACs (DDIM-50, batch 1), as a bare matplotlib Figure (never shown or saved here)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4))
    axes = fig.subplots(1, 2)
    for i, (name, entry) in enumerate(results["models"].items()):
        x = spec_cost(MemeSpec.from_dict(entry["spec"]), 50).trajectory_macs / 1e9
        for ax, key in zip(axes, ("fid", "kid_mean"), strict=True):
            s = score(entry, key, seeds={"0"})  # the table's seed-0 columns; every row has training seed 0
            ax.errorbar([x], [s.mean], yerr=[0 if math.isnan(s.se) else s.se], fmt="os^D"[i // 10 % 4],
                        color=f"C{i % 10}", capsize=3, label=f"{i + 1}: {name}")
            ax.annotate(str(i + 1), (x, s.mean), textcoords="offset points", xytext=(4, 3), fontsize=8)
    for ax, label in zip(axes, ("FID", "KID"), strict=True):
        ax.set(xlabel="trajectory GMACs (DDIM-50, batch 1)", ylabel=f"{label}, training seed 0 (mean +- SE, sampling seeds)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def pareto_plot(results: dict, path: Path) -> None:
    pareto_figure(results).savefig(path, dpi=110)


def protocol(results: dict) -> str | None:
    """How FID/KID were measured (from the first scored sampling seed); None when nothing is scored."""
    first = next((s for e in results["models"].values() for r in e["runs"].values()
                  for s in r["samples"].values()), None)
    if first is None:
        return None
    return (f"FID/KID: n = {first['n']} samples per seed vs {first['n_ref']} reference images, "
            f"protocol {first['protocol']}, weights: {first['weights']}.")


def report(results: dict, figures: Path) -> str:
    lines = table(results)
    measured = protocol(results)
    if measured:
        lines.append(f"\n{measured}")
        pareto_plot(results, figures / "pareto.png")
    if results.get("calibration"):
        calibration_plot(results, figures / "calibration.png")
    return "\n".join(lines + [""] + claims(results))


# ---- command line ----------------------------------------------------------------------------------
def context(args: argparse.Namespace) -> dict:
    profile = PROFILES[args.profile]
    overrides = {k: v for k, v in (("n", args.n), ("steps", args.steps), ("sampling_seeds", args.sampling_seeds))
                 if v is not None}
    profile = dataclasses.replace(profile, **overrides)
    results_path = Path(args.results or REPO / "benchmarks" / f"evidence_{args.profile}.json")
    results = load_results(results_path)
    base = json.loads(json.dumps(results))
    device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
    figures = results_path.with_suffix("")  # benchmarks/evidence_PROFILE/ beside benchmarks/evidence_PROFILE.json
    figures.mkdir(parents=True, exist_ok=True)
    return {"profile": profile, "results": results, "data": args.data or profile.data, "device": device,
            "images": args.images or profile.images, "work": Path(args.work or REPO / "runs" / f"evidence_{args.profile}"),
            "deadline": time.time() + 60 * args.max_minutes if args.max_minutes else None, "figures": figures,
            "weights": args.inception_weights, "save": lambda: save_results(results_path, results, base), "path": results_path}


def train_seeds(pairs: list[str]) -> dict[str, int]:
    out = {}
    for pair in pairs:
        name, _, k = pair.partition("=")
        if not k.isdigit() or int(k) < 1:
            raise MemekitError(f"--train-seeds takes NAME=K with K >= 1, got {pair!r}")
        out[name] = int(k)
    return out


def run(args: argparse.Namespace) -> int:
    from memekit.analysis.fid import resolve_inception_weights

    ctx = context(args)
    resolve_inception_weights(args.inception_weights)  # no weights: say so now, not after the first training
    if args.calibrate:
        calibrate(ctx, [int(b) for b in args.budgets.split(",")])
        return 0
    specs = model_specs(ctx["profile"], ctx["data"], Path(args.export) if args.export else None, args.searched)
    if args.models:
        specs = {n: s for n, s in specs.items() if n in args.models}
    if args.timing:
        others = sorted(set(ctx["results"].get("timing", {})) - set(specs))
        if others:  # the speeds are ratios within one run: never mix runs, never drop rows silently
            raise MemekitError(f"--timing would replace the speeds of {', '.join(others)}, measured in one run "
                               f"with the others: time every row (drop --models; pass --export) or use another --results")
        if args.timing_repeats < 1:
            raise MemekitError(f"--timing-repeats takes a count >= 1, got {args.timing_repeats}")
        ctx["results"]["timing"] = timing(ctx, specs, args.timing_repeats)  # untrained weights: a row need not be trained to be timed
        ctx["save"]()
        return 0
    if "grid" not in ctx["results"]:
        ctx["results"]["grid"] = real_grid(ctx["data"], ctx["profile"].backbone.resolution, ctx["figures"])
    seeds = train_seeds(args.train_seeds)
    for name, spec in specs.items():
        for seed in range(seeds.get(name, 1)):
            print(f"== {name} (training seed {seed})", flush=True)
            if not run_model(name, spec, seed, ctx):
                print("stopped at --max-minutes: rerun the same command to resume")
                return 0
    print(report(load_results(ctx["path"]), ctx["figures"]))  # with what other processes saved
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu32")
    p.add_argument("--data", default=None, help="image folder or .npz (default: UTKFace in ../shared)")
    p.add_argument("--images", type=int, default=None, help="training budget per model (default: the profile's)")
    p.add_argument("--results", default=None, help="results JSON (default benchmarks/evidence_PROFILE.json)")
    p.add_argument("--work", default=None, help="run folders (default runs/evidence_PROFILE)")
    p.add_argument("--export", default=None, help="a study export on the profile's backbone: add its first specs")
    p.add_argument("--searched", type=int, default=3, help="how many exported specs to add (1-3)")
    p.add_argument("--models", nargs="*", default=None, help="only these models")
    p.add_argument("--train-seeds", nargs="*", default=[], metavar="NAME=K", help="K training seeds for NAME")
    p.add_argument("--calibrate", action="store_true", help="single-small along --budgets instead of the table")
    p.add_argument("--budgets", default="25000,50000,100000,150000,200000")
    p.add_argument("--timing", action="store_true", help="sampling and training img/s of every row, side by side in one run")
    p.add_argument("--timing-repeats", type=int, default=3, help="interleaved rounds of --timing (medians)")
    p.add_argument("--n", type=int, default=None, help="samples per sampling seed (default: the profile's)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the profile's)")
    p.add_argument("--sampling-seeds", type=int, default=None, help="sampling seeds (default: the profile's)")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--inception-weights", default=None, metavar="PATH")
    p.add_argument("--report", action="store_true", help="print the table and claims from saved results")
    args = p.parse_args(argv)
    try:
        if args.report:
            ctx = context(args)
            print(report(ctx["results"], ctx["figures"]))
            return 0
        return run(args)
    except MemekitError as err:
        print(f"evidence: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
