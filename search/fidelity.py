"""Proxy fidelity: does the short proxy run rank architectures the way a longer run does?

:func:`proxy_fidelity` retrains K feasible complete trials of a study, either the K best by proxy
quality (``select="top"``: does the proxy order the front-runners?) or K at evenly spaced proxy
ranks from the best to the worst (``select="spread"``: does the proxy order the whole space?),
with a longer image budget and otherwise the study's proxy settings (same data, seed, batch,
learning rate, warm-up, validation set), each into ``STUDY_DIR/fidelity/trial-NNNNN`` (resumable:
:func:`memekit.search.train.train` resumes from the run's last checkpoint and returns at once when
the run is finished), then scores every long run by a **target** (``val``: its validation loss; ``kid`` / ``fid``: of
``n`` DDIM samples against the data's reference split, :func:`~memekit.search.retrain.score_run`)
and measures the rank agreement of the long-run target with **every proxy objective the study
recorded** on its trials (``val_loss``, ``val_rel``, and ``kid``/``fid`` when the study sampled):
Kendall's tau-b and Spearman's rho (:mod:`scipy.stats`). One set of long runs so answers "which
proxy ranks configurations by sample quality?". ``jobs > 1`` trains that many long runs at once
in spawned processes (the CPU threads split between them); each run is the same as a serial one.
``noise_seeds = S`` retrains the best chosen trial with S more seeds at both budgets (the long
runs scored by the target), so that the seed noise of each score can be set beside the spread
between the trials: ranks cannot agree on differences smaller than that noise.

The result goes into the study (user attr ``fidelity``, ``fidelity-spread``, with ``-kid`` /
``-fid`` for those targets), the JSON file of the same name in ``STUDY_DIR`` and, when an export
exists, a section of its ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import FrozenTrial
from scipy import stats

from .results import LoadedStudy, load_study, trial_spec
from .retrain import (
    MIN_TRIALS,
    RetrainError,
    Target,
    TrainJob,
    markers,
    ranked_trials,
    save_record,
    score_run,
    std,
    train_jobs,
)
from .train import TrainConfig, TrainResult

SELECTIONS = ("top", "spread")


# proxy objectives a trial may record (user attrs), besides kid{n} / fid{n} of sampling studies
PROXY_ATTRS = ("val_loss", "val_rel")


def record_name(selection: str, target: str = "val") -> str:
    """Where a check's result is kept: ``fidelity`` (top K) or ``fidelity-spread``, with ``-kid`` or
    ``-fid`` for a sample target (user attr, ``STUDY_DIR/NAME.json`` and the report section's
    markers), so the checks of a study coexist."""
    name = "fidelity" if selection == "top" else f"fidelity-{selection}"
    return name if target == "val" else f"{name}-{target}"


class FidelityError(RetrainError):
    """A fidelity check cannot run (too few trials, a budget that is not longer, ...)."""


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau-b and Spearman's rho between two paired samples, with two-sided p-values."""

    kendall_tau: float
    kendall_p: float
    spearman_rho: float
    spearman_p: float


def rank_agreement(proxy: Sequence[float], long: Sequence[float]) -> RankAgreement:
    """``scipy.stats.kendalltau`` (tau-b, ties corrected) and ``scipy.stats.spearmanr`` of the pairs
    ``(proxy_i, long_i)``; NaN where a sample is constant (no ranking to agree with)."""
    if len(proxy) != len(long) or len(proxy) < MIN_TRIALS:
        raise FidelityError(f"rank agreement needs >= {MIN_TRIALS} pairs, got {len(proxy)} and {len(long)} values")
    with warnings.catch_warnings():  # a constant sample gives NaN, reported as "undefined"
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        tau = stats.kendalltau(proxy, long)
        rho = stats.spearmanr(proxy, long)
    return RankAgreement(float(tau.statistic), float(tau.pvalue), float(rho.statistic), float(rho.pvalue))


@dataclass(frozen=True)
class FidelityResult:
    """Proxy objectives and the long-run target of K trials, and their rank agreements."""

    trials: tuple[int, ...]
    warm_start: tuple[str, ...]
    proxy: tuple[float, ...]  # the study's first objective (proxy quality)
    long: tuple[float, ...]  # the target of the long runs (validation loss, KID or FID)
    agreement: RankAgreement  # of ``proxy`` with ``long``
    quality_name: str
    proxy_images: int
    long_images: int
    run_dirs: tuple[str, ...]
    selection: str = "top"
    noise: dict[str, Any] | None = None  # seed-to-seed spread of the best trial's scores (noise_seeds > 0)
    target: str = "val_loss"  # the name of the long-run score
    proxies: dict[str, tuple[float, ...]] = field(default_factory=dict)  # every recorded proxy objective
    agreements: dict[str, RankAgreement] = field(default_factory=dict)  # of each proxy with ``long``
    long_val_loss: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["agreement"] = _finite(data["agreement"])
        data["agreements"] = {k: _finite(v) for k, v in data["agreements"].items()}
        if self.noise is not None:
            data["noise"] = _finite(self.noise)
        return data


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def long_config(proxy: TrainConfig, images: int) -> TrainConfig:
    """The study's proxy training with ``images`` instead of the proxy budget; checkpoints about every
    tenth of the run (so an interrupted run resumes; they do not change the result)."""
    if images <= proxy.images:
        raise FidelityError(f"--images {images} must exceed the proxy budget of {proxy.images} images")
    steps = images // proxy.batch
    return dataclasses.replace(proxy, images=images, checkpoint_every=max(1, steps // 10), keep_last=1,
                               log_every=max(1, steps // 20))


def _check_run_dir(run_dir: Path, images: int) -> None:
    config = run_dir / "config.json"
    if config.is_file():
        trained = int(json.loads(config.read_text()).get("images", 0))
        if trained > images:
            raise FidelityError(f"{run_dir} was trained to {trained:,} images, more than --images {images:,}: "
                                "use that budget or another --out")


def spread_ranks(n: int, k: int) -> list[int]:
    """``k`` distinct 0-based ranks out of ``n``, evenly spaced from the best (0) to the worst (n - 1)."""
    if not MIN_TRIALS <= k <= n:
        raise FidelityError(f"spread selection needs {MIN_TRIALS} <= K <= {n}, got K = {k}")
    # a step of (n-1)/(k-1) >= 1 and floor(x + 1/2) keep the ranks distinct (round() halves to even)
    return [int(i) for i in np.floor(np.linspace(0, n - 1, k) + 0.5)]


def choose_trials(loaded: LoadedStudy, k: int, select: str = "top") -> list[FrozenTrial]:
    """K feasible complete trials by proxy quality: the ``top`` K, or K at ``spread`` ranks."""
    if select not in SELECTIONS:
        raise FidelityError(f"unknown selection {select!r}: use one of {', '.join(SELECTIONS)}")
    ranked = ranked_trials(loaded, k)
    return ranked[:k] if select == "top" else [ranked[i] for i in spread_ranks(len(ranked), k)]


@dataclass(frozen=True)
class FidelityPlan:
    """Which trials are retrained, with which training config, into which folder."""

    trials: tuple[FrozenTrial, ...]
    config: TrainConfig
    out: Path
    selection: str = "top"

    def to_dict(self) -> dict[str, Any]:
        return {"trials": [t.number for t in self.trials], "selection": self.selection, "out": str(self.out),
                "train": self.config.to_dict()}


def plan_fidelity(loaded: LoadedStudy, k: int, images: int, out: str | Path | None = None,
                  device: str | None = None, select: str = "top") -> FidelityPlan:
    """The chosen trials (:func:`choose_trials`), the long config and the runs' folder (checked)."""
    chosen = choose_trials(loaded, k, select)
    if loaded.study_dir is None and out is None:
        raise FidelityError("the study has no STUDY_DIR: give --out for the fidelity runs")
    out = Path(out) if out is not None else loaded.study_dir / "fidelity"
    config = long_config(loaded.config.proxy_config(device), images)
    for trial in chosen:
        _check_run_dir(out / f"trial-{trial.number:05d}", images)
    return FidelityPlan(tuple(chosen), config, out, select)


def recorded_proxies(loaded: LoadedStudy, trials: Sequence[FrozenTrial]) -> dict[str, tuple[float, ...]]:
    """Every proxy objective recorded on all of ``trials``: the study's own (its first value),
    ``val_loss``, ``val_rel`` and ``kid{n}`` / ``fid{n}`` user attrs, in that order."""
    n = loaded.config.fid_n
    out = {loaded.quality_name: tuple(float(t.values[0]) for t in trials)}
    for name in (*PROXY_ATTRS, f"kid{n}", f"fid{n}"):
        values = [t.user_attrs.get(name) for t in trials]
        if name not in out and all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            out[name] = tuple(float(v) for v in values)
    return out


def fidelity_runs(loaded: LoadedStudy, k: int, images: int, out: str | Path | None = None,
                  device: str | None = None, progress: bool = False,
                  on_run: Callable[[int, TrainResult], None] | None = None, select: str = "top",
                  jobs: int = 1, noise_seeds: int = 0, target: Target | None = None) -> FidelityResult:
    """Retrain K trials (:func:`choose_trials`) for ``images`` images, ``jobs`` at a time, score the
    long runs by ``target`` (default: validation loss) and compare ranks with every recorded proxy
    objective. ``noise_seeds = S > 0`` also trains the best chosen trial with S more seeds at both
    the proxy and the long budget (``OUT/noise/``): the seed-to-seed spread of each score, to set
    beside the spread between trials (ranks cannot agree on differences smaller than the noise)."""
    if jobs < 1:
        raise FidelityError(f"--jobs must be a positive integer, got {jobs}")
    if noise_seeds < 0:
        raise FidelityError(f"--noise-seeds must be an integer >= 0, got {noise_seeds}")
    target = target or Target()
    plan = plan_fidelity(loaded, k, images, out, device, select)
    chosen, config = plan.trials, plan.config
    specs = [trial_spec(t, loaded.space, loaded.prior, loaded.config.sampling_steps, check_cost=False).spec
             for t in chosen]
    work = [TrainJob(t.number, spec, config, plan.out / f"trial-{t.number:05d}")
            for t, spec in zip(chosen, specs, strict=True)]
    best, proxy_config = chosen[0], loaded.config.proxy_config(device)
    seeds = [config.seed + i for i in range(1, noise_seeds + 1)]
    for budget in (proxy_config, config):
        for seed in seeds:
            work.append(TrainJob(best.number, specs[0], dataclasses.replace(budget, seed=seed),
                                 plan.out / "noise" / f"trial-{best.number:05d}-images-{budget.images}-seed-{seed}"))
    results = train_jobs(work, jobs, progress, on_run)
    k = len(chosen)
    long_results = results[:k] + results[k + len(seeds):]  # the K long runs, then the noise runs at the long budget
    scores = [score_run(r, target, device) for r in long_results]
    long = scores[:k]
    proxies = recorded_proxies(loaded, chosen)
    noise = None
    if seeds:
        def proxy_val_loss(t: FrozenTrial) -> float:  # the study's own run, seed config.seed
            fallback = t.values[0] if loaded.quality_name == "val_loss" else math.nan
            return float(t.user_attrs.get("val_loss", fallback))

        noisy_proxy = [proxy_val_loss(best), *(float(r.val["val_loss"]) for r in results[k:k + len(seeds)])]
        noisy_long = [long[0], *scores[k:]]
        noise = {"trial": best.number, "seeds": [config.seed, *seeds], "proxy_val_loss": noisy_proxy,
                 f"long_{target.name}": noisy_long, "proxy_noise_std": std(noisy_proxy),
                 "long_noise_std": std(noisy_long), "proxy_spread_std": std([proxy_val_loss(t) for t in chosen]),
                 "long_spread_std": std(long)}
    return FidelityResult(tuple(t.number for t in chosen), tuple(t.user_attrs.get("warm_start", "") for t in chosen),
                          proxies[loaded.quality_name], tuple(long), rank_agreement(proxies[loaded.quality_name], long),
                          loaded.quality_name, loaded.config.proxy_images, images,
                          tuple(str(j.run_dir) for j in work[:k]), select, noise, target.name, proxies,
                          {name: rank_agreement(values, long) for name, values in proxies.items()},
                          tuple(float(r.val["val_loss"]) for r in results[:k]))


def fidelity_frame(result: FidelityResult) -> pd.DataFrame:
    """One row per trial: proxy and long-run quality and their ranks (1 = best)."""
    frame = pd.DataFrame({"trial": result.trials, "warm_start": result.warm_start, "proxy": result.proxy,
                          "long": result.long})
    frame["proxy_rank"] = frame["proxy"].rank(method="min").astype(int)
    frame["long_rank"] = frame["long"].rank(method="min").astype(int)
    return frame


def _number(value: float) -> str:
    return "undefined (a constant sample)" if math.isnan(value) else f"{value:.3f}"


def noise_text(result: FidelityResult) -> str:
    """One sentence: the seed-to-seed spread of the best trial's scores beside the spread between
    the trials, at both budgets (empty without ``noise_seeds``)."""
    n = result.noise
    if not n:
        return ""

    def ratio(spread: float, noise: float) -> str:
        return f"{spread / noise:.1f}x" if noise > 0 else "undefined"

    return (f"Seed noise: trial {n['trial']} over seeds {n['seeds']} has val_loss std {n['proxy_noise_std']:.5f} "
            f"at the proxy budget and {result.target} std {n['long_noise_std']:.5g} at the long one; between the "
            f"{len(result.trials)} trials the std is {n['proxy_spread_std']:.5f} and {n['long_spread_std']:.5g} "
            f"(spread / noise {ratio(n['proxy_spread_std'], n['proxy_noise_std'])} and "
            f"{ratio(n['long_spread_std'], n['long_noise_std'])}).")


def _agreement_line(name: str, target: str, a: RankAgreement) -> str:
    return (f"proxy {name} vs long {target}: Kendall tau = {_number(a.kendall_tau)} (p = {a.kendall_p:.3g}), "
            f"Spearman rho = {_number(a.spearman_rho)} (p = {a.spearman_p:.3g})")


def fidelity_text(result: FidelityResult) -> str:
    """A small plain-text table and the coefficients of every proxy (what ``memekit fidelity`` prints)."""
    frame = fidelity_frame(result)
    proxy_head = f"proxy {result.quality_name} ({result.proxy_images:,} img)"
    long_head = f"{result.target} ({result.long_images:,} img)"
    lines = [f"{'trial':>6}  {'warm start':<12}  {proxy_head:>28}  {long_head:>22}  {'rank':>4} -> {'rank':<4}"]
    for row in frame.itertuples(index=False):
        lines.append(f"{row.trial:>6}  {row.warm_start:<12}  {row.proxy:>28.5f}  {row.long:>22.5g}  "
                     f"{row.proxy_rank:>4} -> {row.long_rank:<4}")
    a = result.agreement
    lines.append(f"Kendall tau = {_number(a.kendall_tau)} (p = {a.kendall_p:.3g}), Spearman rho = "
                 f"{_number(a.spearman_rho)} (p = {a.spearman_p:.3g}) over {len(frame)} trials")
    lines += [_agreement_line(name, result.target, agr) for name, agr in result.agreements.items()
              if name != result.quality_name]
    if result.noise:
        lines.append(noise_text(result))
    return "\n".join(lines)


def fidelity_markdown(result: FidelityResult) -> str:
    """The ``report.md`` section (between markers, so a rerun replaces it)."""
    frame = fidelity_frame(result)
    chosen = (f"The {len(frame)} best feasible trials" if result.selection == "top" else
              f"{len(frame)} feasible trials at evenly spaced ranks (best to worst)")
    begin, end = markers(result_record_name(result))
    title = "## Proxy fidelity" + ("" if result.selection == "top" else f" ({result.selection} selection)")
    title += "" if result.target == "val_loss" else f", long runs scored by {result.target}"
    names = list(result.proxies)
    lines = [begin, title, "",
             f"{chosen} by proxy {result.quality_name} ({result.proxy_images:,} images) retrained for "
             f"{result.long_images:,} images with the same data, seed and settings; long-run quality is "
             f"{result.target}.", "",
             "| trial | warm start | " + " | ".join(f"proxy {n}" for n in names) + f" | long {result.target} | "
             "proxy rank | long rank |", "|---|---|" + "---|" * (len(names) + 3)]
    for i, r in enumerate(frame.itertuples(index=False)):
        values = " | ".join(f"{result.proxies[n][i]:.5g}" for n in names)
        lines.append(f"| {r.trial} | {r.warm_start} | {values} | {r.long:.5g} | {r.proxy_rank} | {r.long_rank} |")
    lines += ["", "| proxy | Kendall tau-b | p | Spearman rho | p |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {_number(a.kendall_tau)} | {a.kendall_p:.3g} | {_number(a.spearman_rho)} | {a.spearman_p:.3g} |"
              for n, a in result.agreements.items()]
    lines += ["", "(scipy.stats)"]
    if result.noise:
        lines += ["", noise_text(result)]
    lines += [end, ""]
    return "\n".join(lines)


def save_fidelity(loaded: LoadedStudy, result: FidelityResult, export_dir: str | Path | None = None) -> list[Path]:
    """:func:`~memekit.search.retrain.save_record` under :func:`record_name`."""
    return save_record(loaded, result_record_name(result), result.to_dict(), fidelity_markdown(result), export_dir)


def result_record_name(result: FidelityResult) -> str:
    """The record a result is saved under (selection and target kind)."""
    kind = "val" if result.target == "val_loss" else result.target.rstrip("0123456789")
    return record_name(result.selection, kind)


def proxy_fidelity(study_dir: str | Path, k: int, images: int, out: str | Path | None = None,
                   export_dir: str | Path | None = None, device: str | None = None, progress: bool = False,
                   on_run: Callable[[int, TrainResult], None] | None = None, select: str = "top",
                   jobs: int = 1, noise_seeds: int = 0, target: Target | None = None) -> FidelityResult:
    """Open the study in ``study_dir``, run :func:`fidelity_runs`, save with :func:`save_fidelity`."""
    loaded = load_study(study_dir)
    result = fidelity_runs(loaded, k, images, out, device=device, progress=progress, on_run=on_run,
                           select=select, jobs=jobs, noise_seeds=noise_seeds, target=target)
    save_fidelity(loaded, result, export_dir)
    return result
