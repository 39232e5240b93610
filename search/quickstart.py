"""``memekit quickstart OUT``: the whole memekit loop on the built-in data, sized for 2 CPU cores.

    1. spectrum   one pass over builtin:shapes -> SNR(t, f), crossover, spectral prior spec
    2. search     a small Optuna study (tiny space, warm-started with the prior and the paper's
                  hand-set configuration) scored by proxy validation loss and trajectory MACs
    3. export     Pareto-front specs, trials.csv, plots and report.md
    4. train      the best exported configuration, trained for longer
    5. sample     samples from its EMA weights, in a grid beside as many training images
    6. resemble   do the samples look like the data? pixel statistics of samples and training
                  images side by side, and KID against held-out images
    7. report     OUT/REPORT.md linking every artefact

The data is ``builtin:few-shapes`` (three large flat shapes on a flat background, 16 px): what a
model of the ``tiny`` space learns in minutes on 2 CPU cores. ``builtin:shapes`` (dead leaves, whose
many small shapes make texture) needs far longer before its samples look like it. The space's
experts predict ``v = a eps - s x_0`` with plain (``none``) preconditioning: an ``eps`` model is
badly scaled at high noise (``x_0 = (x_t - s eps) / a`` divides its error by a small ``a``, and its
samples come out oversaturated), and a ``wiener`` or ``colour`` model starts at the linear denoiser,
whose samples are Gaussian colour noise, and leaves it too slowly for this budget.

Every stage writes into its own folder or file and is skipped when its output already exists ("done
earlier, skipped"), so an interrupted quickstart resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from memekit.analysis.data import load_images
from memekit.analysis.priors import spectral_report
from memekit.analysis.reports import format_spectrum_summary, write_spectrum_report
from memekit.analysis.threads import applied_threads, apply_threads, choose_threads, describe
from memekit.space import MemeSpec, load_spec, save_spec, spec_cost, uniform_intervals
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_text
from memekit.space.progress import say_line

from .export import baseline_spec, export_study
from .results import load_study
from .sampling import sample_checkpoint, save_comparison_grid
from .searchspace import SearchSpace, load_search_space
from .study import SearchConfig, find_study, open_study
from .train import TrainConfig, train
from .warmstart import draw_label, prior_base
from .workers import count_trials, run_search


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of every stage (the defaults take about 5 minutes on 2 idle CPU cores)."""

    data: str = "builtin:few-shapes:4096"
    space: str = "tiny"
    prediction: str = "v"  # the experts' regression target (module docstring); "tiny" itself predicts eps
    preconditioning: str = "none"
    trials: int = 8
    proxy_images: int = 1024
    proxy_batch: int = 32
    lr: float = 4e-3  # proxies and the final run: 2e-3 needed a third more images for the same samples
    val_images: int = 64
    final_images: int = 40_960
    final_batch: int = 32
    sample_count: int = 100  # samples measured against the data; the grid shows the first grid_count
    grid_count: int = 36
    sample_steps: int = 50
    # DDIM's noise: 1 re-noises every step as DDPM does, which corrects the model's errors on the way
    # (flatter, more compact shapes than deterministic DDIM, eta 0, at 50, 100 or 200 steps)
    sample_eta: float = 1.0
    kid_images: int = 100  # samples scored by KID against the held-out split (0: no KID)
    seed: int = 0
    device: str | None = None  # None: cuda if available, else cpu
    grid_scale: int = 4  # samples and training images are shown upscaled this many times

    @classmethod
    def tiny(cls) -> QuickstartConfig:
        """For tests and notebooks: seconds, not minutes."""
        return cls(data="builtin:few-shapes:128", trials=3, proxy_images=64, proxy_batch=16, val_images=16,
                   final_images=64, final_batch=16, sample_count=4, grid_count=4, sample_steps=5, kid_images=0)


def quickstart_space(config: QuickstartConfig) -> SearchSpace:
    """The ``config.space`` preset with the experts predicting ``config.prediction``."""
    space = load_search_space(config.space)
    diffusion = dataclasses.replace(space.diffusion, prediction=config.prediction)
    return dataclasses.replace(space, name=f"{space.name}-{config.prediction}", diffusion=diffusion)


def space_file(out: Path, config: QuickstartConfig) -> Path:
    """OUT/search_space.json, the study's search space (:func:`quickstart_space`), written when missing."""
    path = out / "search_space.json"
    if not path.is_file():
        atomic_write_text(path, json.dumps(quickstart_space(config).to_dict(), indent=2) + "\n")
    return path


def spectrum_stage(out: Path, config: QuickstartConfig, say: Callable[[str], None] = say_line) -> tuple[MemeSpec, bool]:
    """Spectral analysis of the data under the search space's base architecture; (prior, skipped)."""
    folder = out / "1-spectrum"
    if (folder / "prior_spec.json").is_file():
        return load_spec(folder / "prior_spec.json"), True
    space = load_search_space(str(space_file(out, config)))
    res, n = space.base_expert.resolution, space.n_experts[0]
    images = load_images(config.data, res, split="train", progress=True)
    report = spectral_report(images, prior_base(space), n, min_length=space.min_length, progress=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_spectrum_report(report, folder, {"command": "quickstart", "data": config.data, "resolution": res,
                                           "n_experts": n})
    say(format_spectrum_summary(report, config.data))
    return report.prior, False


def search_config_of(out: Path, config: QuickstartConfig) -> SearchConfig:
    """The quickstart's study: small, multi-objective, warm-started with the prior and the paper's
    configuration."""
    return SearchConfig(study_dir=str(out / "2-study"), space=str(out / "search_space.json"), data=config.data,
                        n_trials=config.trials, preconditioning=config.preconditioning,
                        proxy_images=config.proxy_images, proxy_batch=config.proxy_batch,
                        proxy_warmup_images=config.proxy_batch * 2, proxy_lr=config.lr, val_images=config.val_images,
                        seed=config.seed, warm_start=("prior", "meme-paper", "multi-same"), device=config.device)


def search_stage(out: Path, config: QuickstartConfig, prior: MemeSpec) -> tuple[SearchConfig, bool]:
    """Run (or finish) the quickstart's study, one line per trial; (its config, skipped)."""
    search = search_config_of(out, config)
    space_file(out, config)
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
    return TrainConfig(data=config.data, images=config.final_images, batch=config.final_batch, lr=config.lr,
                       warmup_images=config.final_batch * 4, seed=config.seed, val_images=config.val_images,
                       val_every=0, sample_every=0, sample_count=config.sample_count,
                       sample_steps=config.sample_steps, checkpoint_every=50, keep_last=2, log_every=20,
                       device=config.device)


def train_stage(out: Path, config: QuickstartConfig, spec: MemeSpec,
                say: Callable[[str], None] = say_line) -> tuple[Path, bool]:
    """Train the chosen configuration for longer (auto-resumes); (run folder, skipped)."""
    run_dir = out / "4-train"
    say(f"      the status lines' loss is {loss_name(spec)} at the trained t; the report's validation loss is "
        "the same error on held-out images at 16 fixed t")
    result = train(spec, train_config_of(config), run_dir, progress=True, say=lambda line: say(f"      {line}"))
    say(f"      validation loss {result.val.get('val_loss', float('nan')):.4f} after {result.images_seen} images")
    return run_dir, result.images_trained == 0


def loss_name(spec: MemeSpec) -> str:
    """What the trainer's loss is for ``spec``: the target's MSE, or with preconditioning the weighted
    MSE of the residual over the linear denoiser, whose level is 1."""
    target = f"the MSE of the predicted {spec.diffusion.prediction}"
    if spec.diffusion.preconditioning == "none":
        return target
    return f"{target} weighted by 1 / c_out^2 (1 = the {spec.diffusion.preconditioning} linear denoiser's level)"


def sample_stage(out: Path, config: QuickstartConfig, run_dir: Path,
                 say: Callable[[str], None] = say_line) -> tuple[Path, bool]:
    """Samples of the EMA weights (OUT/5-samples.npz) and the first ``grid_count`` beside as many
    training images, both upscaled (OUT/5-samples.png); (PNG, skipped)."""
    npz, png = out / "5-samples.npz", out / "5-samples.png"
    skipped = npz.is_file() and png.is_file()
    if not npz.is_file():
        report = sample_checkpoint(run_dir, npz, n=config.sample_count, steps=config.sample_steps,
                                   eta=config.sample_eta, seed=config.seed, batch=config.sample_count,
                                   device=config.device, progress=True)
        say(f"      {report.n} images at {report.images_per_s:.1f} img/s")
    samples = _samples(out)[: config.grid_count]
    real = load_images(config.data, samples.shape[1], split="train", limit=len(samples), progress=False)
    return save_comparison_grid(samples, real, png, scale=config.grid_scale), skipped


def _samples(out: Path) -> np.ndarray:
    with np.load(out / "5-samples.npz") as data:
        return data["images"]


# ---- do the samples look like the data? ----------------------------------------------------------
EQUAL_TOLERANCE = 8  # uint8 levels (about 3 %): neighbours this close read as one flat colour
COLOUR_LEVELS = 32  # levels per channel when counting colours (bins of 8 uint8 levels)
# the declared targets (chosen after the pilot runs, before the final one): the samples' statistic
# lies within these distances of the training images'
TARGET_EQUAL_GAP = 0.25  # absolute difference of the fractions
TARGET_COLOUR_RATIO = 4.0  # ratio of the colour counts, either way


def neighbour_equal_fraction(images: np.ndarray, tolerance: int = EQUAL_TOLERANCE) -> float:
    """Fraction of horizontally or vertically adjacent pixel pairs that are nearly equal:
    ``max_c |x[i, j, c] - x[i', j', c]| <= tolerance`` over uint8 NHWC ``images``, pooled over every
    pair of every image. Flat shapes on a flat background score high (only edges differ), noise low."""
    x = np.asarray(images, dtype=np.int16)
    if x.ndim != 4 or min(x.shape[1:3]) < 2:
        raise MemekitError(f"need NHWC images of at least 2 x 2 pixels, got shape {x.shape}")
    across = np.abs(x[:, :, 1:] - x[:, :, :-1]).max(axis=-1)  # (N, H, W-1)
    down = np.abs(x[:, 1:] - x[:, :-1]).max(axis=-1)  # (N, H-1, W)
    return float(((across <= tolerance).sum() + (down <= tolerance).sum()) / (across.size + down.size))


def distinct_colours(images: np.ndarray, levels: int = COLOUR_LEVELS) -> float:
    """Mean over uint8 NHWC ``images`` of the number of distinct colours in an image after quantising
    each channel to ``levels`` levels (``v * levels // 256``): a few for flat shapes, up to H * W for noise."""
    x = np.asarray(images, dtype=np.int64)
    if x.ndim != 4 or len(x) == 0:
        raise MemekitError(f"need a non-empty stack of NHWC images, got shape {x.shape}")
    q = x * levels // 256
    codes = (q * levels ** np.arange(x.shape[-1])).sum(axis=-1)  # (N, H, W): one integer per colour
    return float(np.mean([len(np.unique(c)) for c in codes]))


def resemblance(samples: np.ndarray, training: np.ndarray) -> dict[str, float]:
    """The two pixel statistics of samples and training images side by side, and whether each is
    within its target distance (``TARGET_EQUAL_GAP``, ``TARGET_COLOUR_RATIO``)."""
    eq_s, eq_t = neighbour_equal_fraction(samples), neighbour_equal_fraction(training)
    col_s, col_t = distinct_colours(samples), distinct_colours(training)
    return {"equal_samples": eq_s, "equal_training": eq_t, "equal_within_target": abs(eq_s - eq_t) <= TARGET_EQUAL_GAP,
            "colours_samples": col_s, "colours_training": col_t,
            "colours_within_target": max(col_s / col_t, col_t / col_s) <= TARGET_COLOUR_RATIO}


KID_REFERENCE_IMAGES = 200  # held-out images the KID compares against (their features are cached)


def kid_against_reference(samples: np.ndarray, config: QuickstartConfig) -> dict[str, Any]:
    """KID (Inception pool3 features, unbiased MMD^2 with the cubic kernel; mean and spread over 100
    subsets of half the samples) of the samples and, as the floor a perfect model would reach, of as
    many training images, each against the first ``KID_REFERENCE_IMAGES`` (or all) of the held-out
    (reference) split of ``config.data``."""
    from memekit.analysis.fid import features
    from memekit.analysis.kid import kid

    side, n = samples.shape[1], len(samples)
    held_out = len(load_images(config.data, side, split="reference", progress=False))
    reference = features(config.data, min(KID_REFERENCE_IMAGES, held_out), device=config.device, resolution=side,
                         split="reference")
    training = features(config.data, n, device=config.device, resolution=side, split="train")
    rows: dict[str, Any] = {"n": n, "n_reference": reference.n, "subset_size": max(n // 2, 2),
                            "weights": reference.weights_label}
    for name, feats in (("samples", features(samples, device=config.device)), ("training", training)):
        rows[f"kid_{name}"], rows[f"kid_{name}_std"] = kid(feats, reference, 100, rows["subset_size"])
    return rows


def resemblance_stage(out: Path, config: QuickstartConfig) -> tuple[dict, bool]:
    """OUT/6-resemblance.json: :func:`resemblance` of all samples against as many training images, and
    :func:`kid_against_reference` of the first ``kid_images``; (the numbers, skipped)."""
    path = out / "6-resemblance.json"
    if path.is_file():
        return json.loads(path.read_text()), True
    samples = _samples(out)
    training = load_images(config.data, samples.shape[1], split="train", limit=len(samples), progress=False)
    numbers = {**resemblance(samples, training), "n": len(samples), "tolerance": EQUAL_TOLERANCE,
               "colour_levels": COLOUR_LEVELS}
    if config.kid_images:
        numbers["kid"] = kid_against_reference(samples[: config.kid_images], config)
    atomic_write_text(path, json.dumps(numbers, indent=2) + "\n")
    return numbers, False


def resemblance_table(numbers: dict) -> str:
    """The report's table of the resemblance measures (training images, samples, target, met)."""
    tick = {True: "yes", False: "**no**"}
    rows = [f"| neighbouring pixels nearly equal (every channel within {numbers['tolerance']}/255) | "
            f"{numbers['equal_training']:.3f} | {numbers['equal_samples']:.3f} | within {TARGET_EQUAL_GAP} | "
            f"{tick[numbers['equal_within_target']]} |",
            f"| distinct colours per image ({numbers['colour_levels']} levels per channel) | "
            f"{numbers['colours_training']:.1f} | {numbers['colours_samples']:.1f} | within a factor "
            f"{TARGET_COLOUR_RATIO:g} | {tick[numbers['colours_within_target']]} |"]
    kid = numbers.get("kid")
    if kid:
        rows.append(f"| KID x 1000 against {kid['n_reference']} held-out images ({kid['n']} each; mean +- spread over "
                    f"100 subsets of {kid['subset_size']}) | {1000 * kid['kid_training']:.1f} +- "
                    f"{1000 * kid['kid_training_std']:.1f} | {1000 * kid['kid_samples']:.1f} +- "
                    f"{1000 * kid['kid_samples_std']:.1f} | (floor: the training column) | |")
    head = "| measure | training images | samples | target | met |\n|---|---|---|---|---|\n"
    return head + "\n".join(rows)


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
            "export": (out / "3-export" / "report.md").is_file(), "samples": (out / "5-samples.png").is_file(),
            "resemblance": (out / "6-resemblance.json").is_file()}
    return {"out": str(out), "quickstart": dataclasses.asdict(config),
            "search": search_config_of(out, config).to_dict(), "train": train_config_of(config).to_dict(),
            "done_earlier": [stage for stage, flag in done.items() if flag]}


def report_stage(out: Path, config: QuickstartConfig, prior: MemeSpec, search: SearchConfig,
                 best: optuna.trial.FrozenTrial, run_dir: Path, grid: Path, numbers: dict) -> Path:
    """OUT/REPORT.md: what ran, what was found, how much the samples look like the data, how long
    each stage took, where every artefact is."""
    spec = MemeSpec.from_json(best.user_attrs["spec"])
    cost = spec_cost(spec, 50)
    large = spec_cost(baseline_spec(load_search_space(search.space, search.resolution)), 50)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    val = next((r for r in reversed(records) if r.get("event") == "validation"), {})
    trained = next((r for r in reversed(records) if r.get("event") == "train"), {})
    quarters = ", ".join(f"{v:.4f}" for v in val.get("val_loss_quarters", []))
    T = prior.diffusion.timesteps
    uniform = [iv[0] for iv in uniform_intervals(T, prior.n_experts)] + [T]
    rows = "\n".join(f"| {n} | [{lo}, {hi}) | {spec.soft_assignment[n]:.2f} | "
                     f"{'/'.join(f'{s:.2f}' for s in e.effective_attention_share())} |"
                     for n, (e, (lo, hi)) in enumerate(zip(spec.experts, spec.intervals, strict=True)))
    origin = best.user_attrs.get("warm_start") or draw_label(search.sampler, best.number)
    text = f"""# memekit quickstart

Data `{search.data}`, search space `{load_search_space(search.space).name}` (`{search.space}`: experts
predicting {spec.diffusion.prediction}, preconditioning `{spec.diffusion.preconditioning}`), {search.n_trials} trials,
proxy budget {search.proxy_images} images; {timing_sentence(out)}

## 1. Spectrum of the noisy inputs
Spectral prior boundaries {list(prior.boundaries)} (uniform: {uniform}).

![SNR](1-spectrum/snr_heatmap.png)
![crossover](1-spectrum/crossover.png)

## 2-3. Search and export
{warm_start_sentences(search)}

Best feasible Pareto trial: #{best.number} ({origin}),
proxy {(search.metric_names())[0]} {best.values[0]:.4f}, trajectory {best.values[1]:.3f} GMACs (50 DDIM steps;
single-large on the search space's backbone: {large.trajectory_macs / 1e9:.3f} GMACs).
Full export: [3-export/report.md](3-export/report.md).

| expert | interval | p | attention share by stage (built) |
|---|---|---|---|
{rows}

![Pareto front](3-export/pareto_front.png)

## 4-5. Longer training and samples
Trained in `4-train/` for {val.get('images_seen', '?')} images. The training status lines' loss is {loss_name(spec)}
at the trained t: {trained.get('loss', float('nan')):.4f} at the last line (step {trained.get('step', '?')}). The
validation loss is the same error on {config.val_images} held-out images at 16 fixed t:
{val.get('val_loss', float('nan')):.4f} (per quarter of [0, T): {quarters}).
Trajectory MACs {cost.trajectory_macs / 1e9:.3f} G; params {cost.params:,}.

Left: {min(config.grid_count, config.sample_count)} of the {config.sample_count} samples ({config.sample_steps} DDIM
steps with eta {config.sample_eta:g}, EMA weights); right: as many training images;
both upscaled {config.grid_scale}x (nearest neighbour).

![samples beside training images]({grid.name})

## 6. Do the samples look like the data?
{len(_samples(out))} samples against as many training images ([6-resemblance.json](6-resemblance.json)).
Flat shapes on a flat background have most neighbouring pixels equal and few colours; noise has
neither. A target is a distance from the training images' value, declared in
`memekit.search.quickstart` before the run.

{resemblance_table(numbers)}

{resemblance_verdict(numbers)}
"""
    return atomic_write_text(out / "REPORT.md", text)


def resemblance_verdict(numbers: dict) -> str:
    """One sentence: which targets the samples meet."""
    met = [numbers["equal_within_target"], numbers["colours_within_target"]]
    if all(met):
        return "The samples meet both pixel-statistic targets."
    if any(met):
        return "The samples meet one of the two pixel-statistic targets."
    return "The samples meet neither pixel-statistic target: they do not yet look like the data."


# ---- wall time and load, over resumed runs -------------------------------------------------------
def _timing(out: Path) -> dict:
    path = out / "timing.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_stage(out: Path, index: int, title: str, name: str, run: Callable[[], tuple[Any, bool]],
              summary: Callable[[Any], str], say: Callable[[str], None] = say_line) -> Any:
    """Stage ``index`` of 7: ``run()`` -> (result, skipped), announced, and when it did work timed into
    OUT/timing.json under ``name`` (wall and CPU seconds of this process, all threads, and the
    1-minute load average before and after; summed over the invocations that did work on the stage,
    such as a training extended by a larger ``--train-images``); returns the result."""
    say(f"[{index}/7] {title}")
    wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    result, skipped = run()
    seconds = time.perf_counter() - wall
    if not skipped:
        timing = _timing(out)
        now = {"wall_s": round(seconds, 1), "cpu_s": round(time.process_time() - cpu, 1),
               "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
               "cores": os.cpu_count(), "threads": torch_threads()}
        timing[name] = _add_times(timing.get(name), now)
        atomic_write_text(out / "timing.json", json.dumps(timing, indent=2) + "\n")
    say(f"      {summary(result)} ({'done earlier, skipped' if skipped else f'{seconds:.0f} s'})")
    return result


def _add_times(before: dict | None, now: dict) -> dict:
    """A stage's timing after one more invocation did work on it (a resumed or extended training):
    wall and CPU seconds add up, the load range widens."""
    if before is None:
        return now
    return {**now, "wall_s": round(before["wall_s"] + now["wall_s"], 1),
            "cpu_s": round(before["cpu_s"] + now["cpu_s"], 1),
            "load_before": min(before["load_before"], now["load_before"]),
            "load_after": max(before["load_after"], now["load_after"])}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def timing_sentence(out: Path) -> str:
    """"the stages took 5.1 min wall and 9.8 min CPU on 2 cores with 2 threads (1-minute load average
    0.1 to 2.3; ...)" from OUT/timing.json (stages done in earlier invocations included; start-up and
    the report are not counted)."""
    stages = _timing(out).values()
    if not stages:
        return "no stage timed."
    wall, cpu = sum(s["wall_s"] for s in stages), sum(s["cpu_s"] for s in stages)
    loads = [v for s in stages for v in (s["load_before"], s["load_after"])]
    cores = max(s["cores"] or 0 for s in stages)
    return (f"the stages took {wall / 60:.1f} min wall and {cpu / 60:.1f} min CPU on {cores} cores with "
            f"{max(s['threads'] for s in stages)} threads (1-minute load average {min(loads):.1f} to "
            f"{max(loads):.1f}; per stage in [timing.json](timing.json)).")


def run_quickstart(out: str | Path, config: QuickstartConfig | None = None,
                   say: Callable[[str], None] = say_line) -> Path:
    """Run every stage into ``out`` (resuming finished stages), saying what each does to ``say`` (the
    study's trial lines go to stdout); returns OUT/REPORT.md."""
    config = config or QuickstartConfig()
    # oversubscribed threads make CPU training several times slower on a busy machine: the shared rule
    threads = applied_threads() or choose_threads()
    apply_threads(threads)
    say(describe(threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def stage(index: int, title: str, name: str, run: Callable[[], tuple[Any, bool]],
              summary: Callable[[Any], str] = str) -> Any:
        return run_stage(out, index, title, name, run, summary, say)

    prior = stage(1, "spectrum of the noisy inputs", "spectrum", lambda: spectrum_stage(out, config, say),
                  lambda p: f"prior boundaries {list(p.boundaries)}")
    search = stage(2, f"search: {config.trials} proxy trials", "search", lambda: search_stage(out, config, prior),
                   lambda s: f"study {s.study_dir}")
    best = best_trial(search)
    say(f"      best trial #{best.number}: values {[round(v, 4) for v in best.values]}")
    stage(3, "export the Pareto front", "export", lambda: export_stage(out, search))
    spec = MemeSpec.from_json(best.user_attrs["spec"])
    trained: list[bool] = []

    def train_now() -> tuple[Path, bool]:
        run_dir, skipped = train_stage(out, config, spec, say)
        trained.append(not skipped)
        return run_dir, skipped

    run_dir = stage(4, "train the best configuration", "train", train_now)
    stale = [out / name for name in ("5-samples.npz", "5-samples.png", "6-resemblance.json")]
    if trained[0] and any(p.is_file() for p in stale):
        # the run trained further than when its samples were drawn (a larger --train-images): they
        # and their measures describe an earlier model, so both are redrawn from the longer run
        say("      the run trained further than its samples: redrawing them and their measures")
        for path in stale:
            path.unlink(missing_ok=True)
    grid = stage(5, "sample", "sample", lambda: sample_stage(out, config, run_dir, say))
    numbers = stage(6, "do the samples look like the data?", "resemblance", lambda: resemblance_stage(out, config),
                    resemblance_summary)
    say("[7/7] report")
    report = report_stage(out, config, prior, search, best, run_dir, grid, numbers)
    say(f"      {report}")
    return report


def resemblance_summary(numbers: dict) -> str:
    """The stage's one line: both pixel statistics, training -> samples."""
    return (f"neighbours nearly equal {numbers['equal_training']:.3f} (training) vs {numbers['equal_samples']:.3f} "
            f"(samples); colours per image {numbers['colours_training']:.1f} vs {numbers['colours_samples']:.1f}")
