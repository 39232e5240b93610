"""Re-rank a study's front-runners over several training seeds.

A proxy score is one training run: when the best trials differ by less than the seed-to-seed
noise (``memekit fidelity --noise-seeds`` measures it), their order is an accident of the seed.
:func:`rerank` retrains each of K trials with S more seeds at the proxy budget (or ``images``),
into ``STUDY_DIR/fidelity/noise/trial-NNNNN-images-I-seed-S`` (the folders ``fidelity --noise-seeds``
uses, so runs are shared and resumable), and ranks the trials by their mean score with its standard
error: the study's own quality when a training run measures it (``val_loss``, or ``val_rel`` for a
``--quality val-rel`` study, whose every run also records ``val_loss``), otherwise the validation loss.
Welch's t-test (:func:`scipy.stats.ttest_ind`, ``equal_var=False``) says whether the first is
distinguishable from the second.

At the proxy budget the study's own run is seed ``config.seed`` of each trial, so S more seeds
give S + 1 values per trial; at another budget seed ``config.seed`` is trained too. The result
goes into the study (user attr ``rerank``), ``STUDY_DIR/rerank.json`` and, when an export
exists, a section of its ``report.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial

from memekit.analysis.stats import welch

from .results import LoadedStudy, trial_spec
from .retrain import RetrainError, TrainJob, markers, save_record, top_trials, train_jobs
from .train import TrainConfig, TrainResult

RECORD = "rerank"


# the qualities a proxy training run measures itself (the rest, kid / fid, need samples: ranked by val_loss)
RUN_QUALITIES = ("val_loss", "val_rel")


@dataclass(frozen=True)
class RerankResult:
    """Scores of K trials over several seeds, ranked by their mean: ``quality`` per seed (``scores``)
    and the validation loss per seed (``losses``, the same numbers when ``quality`` is ``val_loss``)."""

    trials: tuple[int, ...]
    warm_start: tuple[str, ...]
    seeds: tuple[int, ...]
    images: int
    losses: tuple[tuple[float, ...], ...]  # val_loss per trial, per seed (in ``seeds`` order)
    quality: str = "val_loss"
    scores: tuple[tuple[float, ...], ...] = ()  # ``quality`` per trial, per seed; empty: ``losses``

    @property
    def values(self) -> tuple[tuple[float, ...], ...]:
        """What the trials are ranked by: ``scores`` of ``quality``."""
        return self.scores or self.losses

    def frame(self) -> pd.DataFrame:
        """One row per trial, best mean first: mean, sample std, standard error, rank (and the mean
        validation loss beside them when the ranking quality is another)."""
        values = np.array(self.values)
        frame = pd.DataFrame({"trial": self.trials, "warm_start": self.warm_start, "mean": values.mean(axis=1),
                              "std": values.std(axis=1, ddof=1), "n": values.shape[1],
                              "mean_val_loss": np.array(self.losses).mean(axis=1)})
        frame["sem"] = frame["std"] / np.sqrt(frame["n"])
        frame = frame.sort_values(["mean", "trial"]).reset_index(drop=True)
        frame["rank"] = np.arange(1, len(frame) + 1)
        return frame

    @property
    def welch_p(self) -> float:
        """Welch's t-test p-value of the first against the second of :meth:`frame`; NaN when
        undefined (one value per trial, or no spread in either)."""
        order = self.frame()["trial"].tolist()
        first, second = (self.values[self.trials.index(n)] for n in order[:2])
        return welch(first, second).p  # NaN for one value per trial or no spread: the verdict says so

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["welch_p"] = None if math.isnan(self.welch_p) else self.welch_p
        return data


@dataclass(frozen=True)
class RerankPlan:
    """Which trials are retrained with which seeds, under which training config, into which folder."""

    trials: tuple[FrozenTrial, ...]
    config: TrainConfig
    seeds: tuple[int, ...]  # the seeds trained now
    reuse: bool  # the study's own proxy run counts as seed ``config.seed``
    out: Path

    def run_dir(self, trial: int, seed: int) -> Path:
        return self.out / f"trial-{trial:05d}-images-{self.config.images}-seed-{seed}"

    def to_dict(self) -> dict[str, Any]:
        return {"trials": [t.number for t in self.trials], "seeds_trained": list(self.seeds),
                "study_run_reused": self.reuse, "images": self.config.images, "out": str(self.out),
                "runs": [str(self.run_dir(t.number, s)) for t in self.trials for s in self.seeds],
                "train": self.config.to_dict()}


def plan_rerank(loaded: LoadedStudy, k: int, seeds: int, images: int | None = None, out: str | Path | None = None,
                device: str | None = None) -> RerankPlan:
    """The K best feasible trials, the seeds to train (S more than the study's own run, which counts
    when ``images`` is the proxy budget) and the runs' folder; checked, nothing trained."""
    if seeds < 1:
        raise RetrainError(f"--seeds must be a positive integer, got {seeds}")
    if loaded.study_dir is None and out is None:
        raise RetrainError("the study has no STUDY_DIR: give --out for the runs")
    chosen = top_trials(loaded, k)
    config = loaded.config.proxy_config(device)
    if images is not None:
        if images < config.batch:
            raise RetrainError(f"--images {images} is smaller than one batch ({config.batch})")
        config = dataclasses.replace(config, images=images)
    reuse = config.images == loaded.config.proxy_images and loaded.quality_name == "val_loss"
    trained = tuple(config.seed + i for i in range(1 if reuse else 0, seeds + 1))
    folder = Path(out) if out is not None else loaded.study_dir / "fidelity" / "noise"
    return RerankPlan(tuple(chosen), config, trained, reuse, folder)


def rerank(loaded: LoadedStudy, k: int, seeds: int, images: int | None = None, out: str | Path | None = None,
           device: str | None = None, jobs: int = 1,
           on_run: Callable[[int, TrainResult], None] | None = None) -> RerankResult:
    """Retrain the K best feasible trials with ``seeds`` more seeds and rank them by the mean of the
    study's quality when a run measures it (:data:`RUN_QUALITIES`), else of val loss (:func:`plan_rerank`)."""
    if jobs < 1:
        raise RetrainError(f"--jobs must be a positive integer, got {jobs}")
    plan = plan_rerank(loaded, k, seeds, images, out, device)
    work = []
    for t in plan.trials:
        spec = trial_spec(t, loaded.space, loaded.prior, loaded.config.sampling_steps, check_cost=False).spec
        for seed in plan.seeds:
            work.append(TrainJob(t.number, spec, dataclasses.replace(plan.config, seed=seed),
                                 plan.run_dir(t.number, seed)))
    trained = iter(train_jobs(work, jobs, progress=False, on_run=on_run))
    quality = loaded.quality_name if loaded.quality_name in RUN_QUALITIES else "val_loss"
    losses, scores = [], []
    for t in plan.trials:
        own = [float(t.user_attrs.get("val_loss", t.values[0]))] if plan.reuse else []  # reuse: quality val_loss
        runs = [next(trained).val for _ in plan.seeds]
        losses.append(tuple(own + [float(val["val_loss"]) for val in runs]))
        scores.append(tuple(own + [float(val.get(quality, math.nan)) for val in runs]))
    seed_list = ([plan.config.seed] if plan.reuse else []) + list(plan.seeds)
    return RerankResult(tuple(t.number for t in plan.trials),
                        tuple(t.user_attrs.get("warm_start", "") for t in plan.trials), tuple(seed_list),
                        plan.config.images, tuple(losses), quality,
                        () if quality == "val_loss" else tuple(scores))


def rerank_text(result: RerankResult) -> str:
    """A plain-text table, best first, and the verdict on first vs second."""
    frame, head = result.frame(), f"mean {result.quality}"
    other = result.quality != "val_loss"
    lines = [f"{'rank':>4}  {'trial':>6}  {'warm start':<12}  {head:>13}  {'std':>8}  {'sem':>8}  n"
             + ("  mean val_loss" if other else "")]
    for r in frame.itertuples(index=False):
        lines.append(f"{r.rank:>4}  {r.trial:>6}  {r.warm_start:<12}  {r.mean:>13.5f}  {r.std:>8.5f}  {r.sem:>8.5f}  "
                     f"{r.n}" + (f"  {r.mean_val_loss:>13.5f}" if other else ""))
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: RerankResult) -> str:
    frame = result.frame()
    a, b = frame.iloc[0], frame.iloc[1]
    p = result.welch_p
    if math.isnan(p):
        return (f"trial {a.trial} has the best mean; no test against trial {b.trial} (fewer than two values, "
                "or no spread, per trial)")
    how = "distinguishable" if p < 0.05 else "not distinguishable"
    return (f"trial {a.trial} has the best mean {result.quality} over {len(result.seeds)} seeds "
            f"({result.images:,} images); "
            f"against trial {b.trial}: Welch's t-test p = {p:.3g}, {how} at the 5 % level")


def rerank_markdown(result: RerankResult) -> str:
    begin, end = markers(RECORD)
    other = result.quality != "val_loss"
    lines = [begin, "## Re-ranked over seeds", "",
             f"The {len(result.trials)} best feasible trials retrained at {result.images:,} images with seeds "
             f"{list(result.seeds)}; ranked by mean {result.quality}.", "",
             f"| rank | trial | warm start | mean {result.quality} | std | sem | n |"
             + (" mean val_loss |" if other else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if other else "")]
    lines += [f"| {r.rank} | {r.trial} | {r.warm_start} | {r.mean:.5g} | {r.std:.2g} | {r.sem:.2g} | {r.n} |"
              + (f" {r.mean_val_loss:.5g} |" if other else "") for r in result.frame().itertuples(index=False)]
    lines += ["", verdict(result) + ".", end, ""]
    return "\n".join(lines)


def save_rerank(loaded: LoadedStudy, result: RerankResult, export_dir: str | Path | None = None) -> list[Path]:
    """:func:`~memekit.search.retrain.save_record` under ``rerank``."""
    return save_record(loaded, RECORD, result.to_dict(), rerank_markdown(result), export_dir)
