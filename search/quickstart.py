"""``memekit quickstart OUT``: the whole memekit loop on the built-in data, sized for 2 CPU cores.

    1. spectrum   one pass over builtin:shapes -> SNR(t, f), crossover, spectral prior spec
    2. search     a small Optuna study (tiny space, warm-started with the prior and the paper's
                  hand-set configuration) scored by proxy validation loss and trajectory MACs
    3. export     Pareto-front specs, trials.csv, plots and report.md
    4. train      the best exported configuration, trained for longer
    5. sample     a grid of samples from its EMA weights
    6. report     OUT/REPORT.md linking every artefact

Every stage writes into its own folder and is skipped when its output already exists ("done
earlier, skipped"), so an interrupted quickstart resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from memekit.analysis.data import load_images
from memekit.analysis.priors import spectral_report
from memekit.analysis.reports import format_spectrum_summary, write_spectrum_report
from memekit.analysis.threads import applied_threads, apply_threads, choose_threads, describe
from memekit.space import MemeSpec, load_spec, save_spec, spec_cost, uniform_intervals
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_text

from .export import baseline_spec, export_study
from .results import load_study
from .sampling import sample_checkpoint, save_comparison_grid
from .searchspace import load_search_space
from .study import SearchConfig, find_study, open_study
from .train import TrainConfig, train
from .warmstart import prior_base
from .workers import count_trials, run_search


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of every stage (the defaults finish in under 10 minutes on 2 CPU cores)."""

    data: str = "builtin:shapes:2048"
    space: str = "tiny"
    trials: int = 8
    proxy_images: int = 1536
    proxy_batch: int = 32
    val_images: int = 64
    final_images: int = 30_720
    final_batch: int = 64
    sample_count: int = 36
    sample_steps: int = 50
    seed: int = 0
    device: str | None = None  # None: cuda if available, else cpu
    grid_scale: int = 4  # samples and training images are shown upscaled this many times

    @classmethod
    def tiny(cls) -> QuickstartConfig:
        """For tests and notebooks: seconds, not minutes."""
        return cls(data="builtin:shapes:128", trials=3, proxy_images=64, proxy_batch=16, val_images=16,
                   final_images=64, final_batch=16, sample_count=4, sample_steps=5)


def _stage(name: str, index: int, total: int = 6) -> float:
    print(f"[{index}/{total}] {name}", flush=True)
    return time.perf_counter()


def _done(start: float, what: str, skipped: bool = False) -> None:
    when = "done earlier, skipped" if skipped else f"{time.perf_counter() - start:.0f} s"
    print(f"      {what} ({when})", flush=True)


def spectrum_stage(out: Path, config: QuickstartConfig) -> tuple[MemeSpec, bool]:
    """Spectral analysis of the data under the search space's base architecture; (prior, skipped)."""
    folder = out / "1-spectrum"
    if (folder / "prior_spec.json").is_file():
        return load_spec(folder / "prior_spec.json"), True
    space = load_search_space(config.space)
    res, n = space.base_expert.resolution, space.n_experts[0]
    images = load_images(config.data, res, split="train", progress=True)
    report = spectral_report(images, prior_base(space), n, min_length=space.min_length, progress=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_spectrum_report(report, folder, {"command": "quickstart", "data": config.data, "resolution": res,
                                           "n_experts": n})
    print(format_spectrum_summary(report, config.data))
    return report.prior, False


def search_config_of(out: Path, config: QuickstartConfig) -> SearchConfig:
    """The quickstart's study: small, multi-objective, warm-started with the prior and the paper's
    configuration."""
    return SearchConfig(study_dir=str(out / "2-study"), space=config.space, data=config.data, n_trials=config.trials,
                        proxy_images=config.proxy_images, proxy_batch=config.proxy_batch,
                        proxy_warmup_images=config.proxy_batch * 2, proxy_lr=1e-3, val_images=config.val_images,
                        seed=config.seed, warm_start=("prior", "meme-paper", "multi-same"), device=config.device)


def search_stage(out: Path, config: QuickstartConfig, prior: MemeSpec) -> tuple[SearchConfig, bool]:
    """Run (or finish) the quickstart's study, one line per trial; (its config, skipped)."""
    search = search_config_of(out, config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    before = find_study(search)
    if before is not None and count_trials(before)[0] >= search.n_trials:
        return search, True
    study_dir = Path(search.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    if not (study_dir / "prior_spec.json").is_file():
        save_spec(prior, study_dir / "prior_spec.json")
    run_search(search, progress=True)
    return search, False


def best_trial(search: SearchConfig) -> optuna.trial.FrozenTrial:
    """The feasible Pareto-front trial with the best quality."""
    study = open_study(search, seed=search.seed, create=False)
    front = [t for t in study.best_trials if t.values and t.values[0] < float("inf")]
    if not front:
        raise MemekitError("no feasible finished trial in the quickstart study: rerun with more trials")
    return min(front, key=lambda t: t.values[0])


def export_stage(out: Path, search: SearchConfig) -> tuple[Path, bool]:
    """Export the Pareto front (specs, trials.csv, plots, report.md); (folder, skipped)."""
    folder = out / "3-export"
    if (folder / "report.md").is_file():
        return folder, True
    export_study(load_study(search.study_dir), folder, overwrite=True)
    return folder, False


def train_config_of(config: QuickstartConfig) -> TrainConfig:
    """The longer training of the chosen configuration."""
    return TrainConfig(data=config.data, images=config.final_images, batch=config.final_batch, lr=1e-3,
                       warmup_images=config.final_batch * 4, seed=config.seed, val_images=config.val_images,
                       val_every=0, sample_every=0, sample_count=config.sample_count,
                       sample_steps=config.sample_steps, checkpoint_every=50, keep_last=2, log_every=20,
                       device=config.device)


def train_stage(out: Path, config: QuickstartConfig, spec: MemeSpec) -> tuple[Path, bool]:
    """Train the chosen configuration for longer (auto-resumes); (run folder, skipped)."""
    run_dir = out / "4-train"
    result = train(spec, train_config_of(config), run_dir, progress=True, say=lambda line: print(f"      {line}"))
    print(f"      val loss {result.val.get('val_loss', float('nan')):.4f} after {result.images_seen} images")
    return run_dir, result.images_trained == 0


def sample_stage(out: Path, config: QuickstartConfig, run_dir: Path) -> tuple[Path, bool]:
    """Samples of the EMA weights beside as many training images, both upscaled; (PNG, skipped)."""
    import numpy as np

    npz, png = out / "5-samples.npz", out / "5-samples.png"
    skipped = npz.is_file() and png.is_file()
    if not npz.is_file():
        report = sample_checkpoint(run_dir, npz, n=config.sample_count, steps=config.sample_steps,
                                   seed=config.seed, batch=config.sample_count, device=config.device, progress=True)
        print(f"      {report.n} images at {report.images_per_s:.1f} img/s")
    with np.load(npz) as data:
        samples = data["images"]
    real = load_images(config.data, samples.shape[1], split="train", limit=len(samples), progress=False)
    return save_comparison_grid(samples, real, png, scale=config.grid_scale), skipped


PRIOR_SENTENCE = ("The spectral prior is memekit's starting configuration measured from this data: interval "
                  "boundaries where the per-frequency signal-to-noise ratio of the noisy inputs changes most, "
                  "per-stage attention shares from how much of each stage's frequency band the noise buries in "
                  "the interval, and p_n that keep both the paper's share of each expert's training inside its "
                  "interval and its per-step training density.")


def warm_start_sentences(search: SearchConfig) -> str:
    """Two sentences for the report: what the prior is, and how it fared against the other warm starts
    of the study (proxy quality and its rank among the finished trials)."""
    study = open_study(search, seed=search.seed, create=False)
    finished = sorted((t for t in study.trials if t.values and t.values[0] < float("inf")), key=lambda t: t.values[0])
    warm = {t.user_attrs["warm_start"]: t for t in finished if t.user_attrs.get("warm_start")}
    if "prior" not in warm:
        return PRIOR_SENTENCE
    name = (study.metric_names or search.metric_names())[0]
    others = ", ".join(f"{w} {t.values[0]:.4f} (rank {finished.index(t) + 1})" for w, t in warm.items() if w != "prior")
    prior = warm["prior"]
    return (f"{PRIOR_SENTENCE} In this study it scored {name} {prior.values[0]:.4f} (rank {finished.index(prior) + 1} "
            f"of {len(finished)} finished trials; lower is better) against {others or 'no other warm start'}, "
            "single proxy runs whose differences below the seed noise do not rank anything "
            "(`memekit rerank` repeats them).")


def quickstart_plan(out: str | Path, config: QuickstartConfig) -> dict:
    """The settings of every stage and the stages already done in ``out`` (``--dry-run``)."""
    out = Path(out)
    done = {"spectrum": (out / "1-spectrum" / "prior_spec.json").is_file(),
            "export": (out / "3-export" / "report.md").is_file(), "samples": (out / "5-samples.png").is_file()}
    return {"out": str(out), "quickstart": dataclasses.asdict(config),
            "search": search_config_of(out, config).to_dict(), "train": train_config_of(config).to_dict(),
            "done_earlier": [stage for stage, flag in done.items() if flag]}


def report_stage(out: Path, config: QuickstartConfig, prior: MemeSpec, search: SearchConfig,
                 best: optuna.trial.FrozenTrial, export_dir: Path, run_dir: Path, grid: Path, seconds: float) -> Path:
    """OUT/REPORT.md: what ran, what was found, where every artefact is."""
    spec = MemeSpec.from_json(best.user_attrs["spec"])
    cost = spec_cost(spec, 50)
    large = spec_cost(baseline_spec(load_search_space(search.space, search.resolution)), 50)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    val = next((r for r in reversed(records) if r.get("event") == "validation"), {})
    uniform = [iv[0] for iv in uniform_intervals(prior.diffusion.timesteps, prior.n_experts)] + [prior.diffusion.timesteps]
    rows = "\n".join(f"| {n} | [{lo}, {hi}) | {spec.soft_assignment[n]:.2f} | "
                     f"{'/'.join(f'{s:.2f}' for s in e.effective_attention_share())} |"
                     for n, (e, (lo, hi)) in enumerate(zip(spec.experts, spec.intervals, strict=True)))
    text = f"""# memekit quickstart

Data `{search.data}`, search space `{search.space}`, {search.n_trials} trials, proxy budget
{search.proxy_images} images; total time {seconds / 60:.1f} min.

## 1. Spectrum of the noisy inputs
Spectral prior boundaries {list(prior.boundaries)} (uniform: {uniform}).

![SNR](1-spectrum/snr_heatmap.png)
![crossover](1-spectrum/crossover.png)

## 2-3. Search and export
{warm_start_sentences(search)}

Best feasible Pareto trial: #{best.number} ({best.user_attrs.get('warm_start') or 'found by the sampler'}),
proxy {(search.metric_names())[0]} {best.values[0]:.4f}, trajectory {best.values[1]:.3f} GMACs (50 DDIM steps;
single-large on the search space's backbone: {large.trajectory_macs / 1e9:.3f} GMACs).
Full export: [3-export/report.md](3-export/report.md).

| expert | interval | p | attention share by stage (built) |
|---|---|---|---|
{rows}

![Pareto front](3-export/pareto_front.png)

## 4-5. Longer training and samples
Trained in `4-train/` for {val.get('images_seen', '?')} images: validation loss {val.get('val_loss', float('nan')):.4f}
(per quarter of [0, T): {', '.join(f'{v:.4f}' for v in val.get('val_loss_quarters', []))}).
Trajectory MACs {cost.trajectory_macs / 1e9:.3f} G; params {cost.params:,}.

Left: {config.sample_count} samples ({config.sample_steps} DDIM steps, EMA weights); right: as many training
images; both upscaled {config.grid_scale}x (nearest neighbour).

![samples beside training images]({grid.name})
"""
    return atomic_write_text(out / "REPORT.md", text)


def run_quickstart(out: str | Path, config: QuickstartConfig | None = None) -> Path:
    """Run every stage into ``out`` (resuming finished stages); returns OUT/REPORT.md."""
    config = config or QuickstartConfig()
    # oversubscribed threads make CPU training several times slower on a busy machine: the shared rule
    threads = applied_threads() or choose_threads()
    apply_threads(threads)
    print(describe(threads), flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    t = _stage("spectrum of the noisy inputs", 1)
    prior, skipped = spectrum_stage(out, config)
    _done(t, f"prior boundaries {list(prior.boundaries)}", skipped)
    t = _stage(f"search: {config.trials} proxy trials", 2)
    search, skipped = search_stage(out, config, prior)
    best = best_trial(search)
    _done(t, f"best trial #{best.number}: values {[round(v, 4) for v in best.values]}", skipped)
    t = _stage("export the Pareto front", 3)
    export_dir, skipped = export_stage(out, search)
    _done(t, f"{export_dir}", skipped)
    t = _stage("train the best configuration", 4)
    run_dir, skipped = train_stage(out, config, MemeSpec.from_json(best.user_attrs["spec"]))
    _done(t, f"{run_dir}", skipped)
    t = _stage("sample", 5)
    grid, skipped = sample_stage(out, config, run_dir)
    _done(t, f"{grid}", skipped)
    t = _stage("report", 6)
    report = report_stage(out, config, prior, search, best, export_dir, run_dir, grid, time.perf_counter() - start)
    _done(t, f"{report}")
    return report
