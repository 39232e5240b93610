"""Retraining a study's trials (what ``memekit fidelity`` and ``memekit rerank`` share).

:class:`TrainJob` is one run of a trial's spec; :func:`train_jobs` trains a list of them in this
process or in ``jobs`` spawned processes that split the CPU threads (each run equals a serial
one: its randomness depends on its own seed and step only). :func:`score_run` scores a finished
run by a target (its validation loss, or KID / FID of freshly drawn samples, cached in the run
folder; :class:`Target` and the error lie in :mod:`memekit.search.retrain_target`, torch-free).
:func:`save_record` stores a check's result in the study, as ``STUDY_DIR/NAME.json`` and
as a section of the export's ``report.md``.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial

from memekit.analysis.stats import sample_sd
from memekit.space.files import atomic_write_json, atomic_write_text

from .export import REPORT_FILE
from .results import LoadedStudy, select_trials
from .retrain_target import TARGETS as TARGETS  # re-exported: torch-free there
from .retrain_target import RetrainError, Target
from .train import TrainConfig, TrainResult, train

MIN_TRIALS = 3  # rank correlations of fewer pairs say nothing


def ranked_trials(loaded: LoadedStudy, k: int) -> list[FrozenTrial]:
    """Every feasible complete trial by proxy quality, best first; a one-line error unless there
    are ``k >= MIN_TRIALS`` of them."""
    if k < MIN_TRIALS:
        raise RetrainError(f"K = {k}: the rank agreement needs K >= {MIN_TRIALS} trials")
    ranked = select_trials(loaded.study, max(1, len(loaded.study.trials)))
    if len(ranked) < k:
        raise RetrainError(f"K = {k}, but study {loaded.study.study_name!r} has only {len(ranked)} feasible "
                           "complete trials")
    return ranked


def top_trials(loaded: LoadedStudy, k: int) -> list[FrozenTrial]:
    """The ``k`` best feasible complete trials by proxy quality (see :func:`ranked_trials`)."""
    return ranked_trials(loaded, k)[:k]


@dataclass(frozen=True)
class TrainJob:
    """One training run of a trial's spec (for :func:`train_jobs`)."""

    trial: int
    spec: Any
    config: TrainConfig
    run_dir: Path


def _init_job(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_job(spec: Any, config: TrainConfig, run_dir: Path) -> TrainResult:
    return train(spec, config, run_dir, progress=False)


def train_jobs(work: Sequence[TrainJob], jobs: int, progress: bool,
               on_run: Callable[[int, TrainResult], None] | None) -> list[TrainResult]:
    """Train every job (in this process, or ``jobs`` spawned processes sharing the CPU threads);
    the results in job order."""
    results: list[TrainResult] = []
    if jobs == 1:
        for job in work:
            results.append(train(job.spec, job.config, job.run_dir, progress=progress))
            if on_run is not None:
                on_run(job.trial, results[-1])
        return results
    threads = max(1, torch.get_num_threads() // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_job,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_train_job, job.spec, job.config, job.run_dir) for job in work]
        for job, future in zip(work, futures, strict=True):  # in order; the pool keeps every process busy
            results.append(future.result())
            if on_run is not None:
                on_run(job.trial, results[-1])
    return results


def score_run(result: TrainResult, target: Target, device: str | None = None) -> float:
    """``result``'s score by ``target``; sample metrics are cached in ``RUN_DIR/target-nN-stepsS.json``
    (keyed by the run's step, so a run trained further is scored again)."""
    if target.kind == "val":
        return float(result.val["val_loss"])
    path = result.run_dir / f"target-n{target.n}-steps{target.steps}.json"
    cached = json.loads(path.read_text()) if path.is_file() else None
    if cached is None or cached.get("step") != result.steps or cached.get("reference") != target.reference:
        from .metrics import sample_metrics

        metrics = sample_metrics(result.run_dir, target.reference, n=target.n, steps=target.steps, seeds=1,
                                 device=device)
        cached = {"step": result.steps, "reference": target.reference, **metrics.to_dict()}
        atomic_write_json(path, cached)
    return float(cached[f"{target.kind}_mean"])


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); NaN for fewer than two values (:func:`memekit.analysis.stats.sample_sd`)."""
    return sample_sd(values)


def markers(name: str) -> tuple[str, str]:
    """The HTML comments around a memekit section of ``report.md`` (a rerun replaces the section)."""
    return f"<!-- memekit:{name} -->", f"<!-- /memekit:{name} -->"


def replace_report_section(report: Path, name: str, markdown: str) -> None:
    """Add (or replace) the section between ``name``'s markers (see :func:`markers`) at the end of
    ``report`` (written atomically)."""
    begin, end = markers(name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    text = pattern.sub("", report.read_text()).rstrip("\n") + "\n\n"
    atomic_write_text(report, text + markdown)


def save_record(loaded: LoadedStudy, name: str, data: dict[str, Any], markdown: str,
                export_dir: str | Path | None = None) -> list[Path]:
    """Record a check's result in the study (user attr ``name``), ``STUDY_DIR/NAME.json`` (atomic)
    and, when the export (``export_dir``, default ``STUDY_DIR/export``) has a ``report.md``, its
    section between ``name``'s markers."""
    loaded.study.set_user_attr(name, data)
    written = []
    if loaded.study_dir is not None:
        atomic_write_json(loaded.study_dir / f"{name}.json", data)
        written.append(loaded.study_dir / f"{name}.json")
    export = Path(export_dir) if export_dir is not None else (loaded.study_dir / "export" if loaded.study_dir else None)
    if export is not None and (export / REPORT_FILE).is_file():
        replace_report_section(export / REPORT_FILE, name, markdown)
        written.append(export / REPORT_FILE)
    return written
