"""Reading a study made by ``memekit search``: open it, choose trials, rebuild their specs.

:func:`load_study` opens a study from its ``STUDY_DIR`` (or a storage URL and a name) together
with what is needed to rebuild its specs (:class:`LoadedStudy`); :func:`select_trials` picks trials
(the feasible Pareto front, or the top K by quality); :func:`trial_spec` rebuilds a trial's MemeSpec
with ``suggest_spec(FixedTrial(params), space, prior)`` and compares it with the spec, parameter count
and MACs the trial recorded. Export, fidelity and rerank all start here.

What a report needs to know about its noise and its sampler is read here too: :func:`seed_noise`
(the proxy's seed-to-seed SD, pooled from the runs ``memekit rerank`` or ``memekit fidelity
--noise-seeds`` stored in the study) and :func:`startup_phase` (which trials the sampler drew at
random before it modelled the data).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from memekit.analysis.stats import PooledSD, pooled_sd
from memekit.space import MemeSpec, SpecCost, load_spec, spec_cost
from memekit.space.errors import MemekitError, SpecError

from .searchspace import SearchSpace, suggest_spec
from .storage import journal_path, open_storage, redact_url, storage_kind
from .study import (
    CONFIG_FILE,
    PRIOR_SOURCE_FILE,
    STORAGE_ENV,
    SearchConfig,
    stored_config,
    study_space,
)
from .warmstart import startup_trials


class ResultsError(MemekitError, ValueError):
    """A study cannot be found or read, or its trials cannot be rebuilt."""


@dataclass(frozen=True)
class LoadedStudy:
    """A study made by ``memekit search``, with what is needed to rebuild its specs."""

    study: optuna.Study
    config: SearchConfig
    space: SearchSpace
    prior: MemeSpec | None
    study_dir: Path | None
    where: str  # storage, passwords redacted

    @property
    def multi_objective(self) -> bool:
        return len(self.study.directions) > 1

    @property
    def quality_name(self) -> str:
        return (self.study.metric_names or self.config.metric_names())[0]

    @property
    def cost_name(self) -> str:
        """The second objective, or ``trajectory_gmacs`` (a user attr) in single-objective studies."""
        names = self.study.metric_names or self.config.metric_names()
        return names[1] if self.multi_objective and len(names) > 1 else "trajectory_gmacs"


# ---- opening a study ------------------------------------------------------------------------------
def _config_file(study_dir: Path) -> SearchConfig:
    if not study_dir.is_dir():
        raise ResultsError(f"study folder {str(study_dir)!r} does not exist: give the STUDY_DIR of "
                          "'memekit search', or --storage URL --study NAME")
    path = study_dir / CONFIG_FILE
    if not path.is_file():
        raise ResultsError(f"{str(study_dir)!r} holds no study (no search_config.json): give the STUDY_DIR of "
                          "'memekit search', or --storage URL --study NAME")
    return stored_config(study_dir)


def _open_storage(storage: str | None, study_dir: Path | None) -> optuna.storages.BaseStorage:
    if storage_kind(storage) == "journal":
        path = journal_path(storage, study_dir or Path.cwd())
        if not path.is_file():  # opening a journal creates it: check first
            raise ResultsError(f"no study journal at {str(path)!r}")
    return open_storage(storage, study_dir or Path.cwd())


def load_study(study_dir: str | Path | None = None, storage: str | None = None,
               study_name: str | None = None) -> LoadedStudy:
    """Open a memekit study from ``STUDY_DIR`` (its search_config.json names storage and study) or
    from ``storage`` + ``study_name``; one-line :class:`ResultsError` when there is none."""
    folder = Path(study_dir) if study_dir is not None else None
    file_config = _config_file(folder) if folder is not None else None
    storage = storage or os.environ.get(STORAGE_ENV) or (file_config.storage if file_config else None)
    if storage is not None and ":***@" in storage:
        raise ResultsError("the study's storage URL is stored without its password: pass --storage URL "
                          "(or set MEMEKIT_STORAGE)")
    name = study_name or (file_config.study_name if file_config else None)
    if folder is None and (storage is None or name is None):
        raise ResultsError("give STUDY_DIR, or both --storage URL and --study NAME")
    backend = _open_storage(storage, folder)
    where = redact_url(storage) if storage else str(journal_path(None, folder or Path.cwd()))
    try:
        study = optuna.load_study(study_name=name, storage=backend, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        names = optuna.get_all_study_names(backend)
        raise ResultsError(f"no study named {name!r} in {where} (studies there: "
                          f"{', '.join(names) or 'none'})") from None
    stored = study.user_attrs.get("memekit_config")
    if stored is None and file_config is None:
        raise ResultsError(f"study {name!r} has no memekit_config: it was not made by 'memekit search'")
    config = SearchConfig.from_stored(stored) if stored is not None else file_config
    folder = folder or (Path(config.study_dir) if config.study_dir else None)
    config = dataclasses.replace(config, study_dir=str(folder or ""))
    space = study_space(config, folder)
    prior_file = folder / "prior_spec.json" if folder is not None else None
    prior = load_spec(prior_file) if prior_file is not None and prior_file.is_file() else None
    return LoadedStudy(study, config, space, prior, folder, where)


def prior_source(loaded: LoadedStudy) -> dict | None:
    """Which prior the study seeded and from what (the study's user attr ``memekit_prior``, or
    ``STUDY_DIR/prior_source.json``); None for studies made before memekit recorded it."""
    source = loaded.study.user_attrs.get("memekit_prior")
    path = loaded.study_dir / PRIOR_SOURCE_FILE if loaded.study_dir is not None else None
    if source is None and path is not None and path.is_file():
        source = json.loads(path.read_text())
    return source if isinstance(source, dict) else None


# ---- what a report knows about its noise and its sampler ------------------------------------------------
@dataclass(frozen=True)
class SeedNoise:
    """The proxy's seed-to-seed SD of one run's ``quality`` (validation loss unless said), pooled over
    the trials that were retrained with several seeds at the proxy budget
    (:func:`~memekit.analysis.stats.pooled_sd`)."""

    sd: PooledSD
    trials: tuple[int, ...]
    runs: int
    source: str  # the records it was pooled from
    quality: str = "val_loss"

    @property
    def difference_se(self) -> float:
        """SE of the difference of two single runs: ``sqrt(2) x SD`` (independent runs)."""
        return math.sqrt(2.0) * self.sd.sd


def seed_noise(loaded: LoadedStudy, quality: str = "val_loss") -> SeedNoise | None:
    """The proxy's seed SD of ``quality`` from the study's records, one group of runs per trial:
    ``memekit rerank`` (user attr ``rerank``, when it ran at the proxy budget; its ``losses`` are
    val_loss, its ``scores`` the ``quality`` it ranked by), then, for val_loss, the noise runs of
    ``memekit fidelity --noise-seeds`` (user attrs ``fidelity*``, for trials rerank did not cover);
    None when no trial has two runs."""
    groups: dict[int, list[float]] = {}
    sources = []
    rerank = loaded.study.user_attrs.get("rerank")
    if isinstance(rerank, dict) and rerank.get("images") == loaded.config.proxy_images:
        key = "losses" if quality == "val_loss" else "scores" if rerank.get("quality") == quality else None
        for trial, values in zip(rerank.get("trials", []), rerank.get(key, []) if key else [], strict=False):
            groups[int(trial)] = [float(v) for v in values]
        sources += ["memekit rerank"] if groups else []
    for name, record in sorted(loaded.study.user_attrs.items() if quality == "val_loss" else ()):
        noise = record.get("noise") if name.startswith("fidelity") and isinstance(record, dict) else None
        if isinstance(noise, dict) and int(noise.get("trial", -1)) not in groups and noise.get("proxy_val_loss"):
            groups[int(noise["trial"])] = [float(v) for v in noise["proxy_val_loss"]]
            sources.append(f"memekit fidelity --noise-seeds ({name})")
    groups = {t: [v for v in values if math.isfinite(v)] for t, values in groups.items()}
    groups = {t: values for t, values in groups.items() if len(values) > 1}
    if not groups:
        return None
    sd = pooled_sd(list(groups.values()))
    return SeedNoise(sd, tuple(sorted(groups)), sum(len(v) for v in groups.values()), " and ".join(sources), quality)


@dataclass(frozen=True)
class StartupPhase:
    """Which finished trials a study's sampler drew at random before it modelled the data."""

    sampler: str
    startup: int | None  # trials drawn at random (warm starts included); None: every trial (random sampler)
    finished: int
    warm: tuple[int, ...]  # warm-start trials
    random: tuple[int, ...]  # trials drawn at random

    @property
    def proposed(self) -> int:
        """Trials the sampler proposed from the trials before them."""
        return self.finished - len(self.warm) - len(self.random)


def startup_phase(loaded: LoadedStudy) -> StartupPhase:
    """Trials numbered below the sampler's start-up (:func:`~memekit.search.warmstart.startup_trials`)
    that are not warm starts were random draws (exact for one worker; with several, about)."""
    startup = startup_trials(loaded.config.sampler)
    trials = [t for t in loaded.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
              if not t.user_attrs.get("surplus")]
    warm = tuple(t.number for t in trials if t.user_attrs.get("warm_start"))
    random = tuple(t.number for t in trials if not t.user_attrs.get("warm_start")
                   and (startup is None or t.number < startup))
    return StartupPhase(loaded.config.sampler, startup, len(trials), warm, random)


# ---- choosing trials ------------------------------------------------------------------------------
def is_feasible(trial: FrozenTrial) -> bool:
    """COMPLETE, every constraint <= 0 (Optuna's convention) and finite objective values."""
    return (trial.state == TrialState.COMPLETE and all(c <= 0 for c in trial.constraints.values())
            and all(math.isfinite(v) for v in trial.values or [math.nan]))


def trial_state(trial: FrozenTrial) -> str:
    """``COMPLETE``, ``infeasible`` (complete but a constraint > 0), ``PRUNED``, ``FAIL``, ..."""
    if trial.state == TrialState.COMPLETE and not is_feasible(trial):
        return "infeasible"
    return trial.state.name


def select_trials(study: optuna.Study, top: int | None = None) -> list[FrozenTrial]:
    """``top=None``: the feasible Pareto front (``study.best_trials``; the best trial(s) of a
    single-objective study); else the ``top`` feasible complete trials by the first objective.
    Ordered by the first objective, then trial number."""
    if top is not None and top < 1:
        raise ResultsError(f"--top must be a positive integer, got {top}")
    if top is None:
        chosen = [t for t in study.best_trials if is_feasible(t)]
    else:
        chosen = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_feasible(t)]
    chosen.sort(key=lambda t: (t.values[0], t.number))
    return chosen if top is None else chosen[:top]


# ---- specs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialSpec:
    """A trial's spec rebuilt from its params, and how it compares with what the trial recorded."""

    number: int
    rebuilt: MemeSpec
    recorded: MemeSpec | None
    differences: tuple[str, ...]  # empty: rebuilt spec, params and MACs equal the recorded ones

    @property
    def rebuilt_differs(self) -> bool:
        """The rebuilt spec is not the one the trial trained (e.g. the search space changed since)."""
        return self.recorded is not None and self.recorded.to_dict() != self.rebuilt.to_dict()

    @property
    def spec(self) -> MemeSpec:
        """The spec to export: the rebuilt one, unless it differs from the trained (recorded) one."""
        return self.recorded if self.rebuilt_differs else self.rebuilt


@functools.lru_cache(maxsize=512)
def cost_of(spec: MemeSpec, sampling_steps: int) -> SpecCost:
    """:func:`spec_cost`, memoised (specs are frozen; exports of one study repeat them)."""
    return spec_cost(spec, sampling_steps)


def trial_spec(trial: FrozenTrial, space: SearchSpace, prior: MemeSpec | None, sampling_steps: int,
               check_cost: bool = True) -> TrialSpec:
    """Rebuild ``trial``'s spec with ``suggest_spec(FixedTrial(params), space, prior)`` and compare it with
    the user attr ``spec``, and (``check_cost``, :func:`spec_cost`) its parameter count and
    trajectory MACs with the user attrs ``params_total`` and ``trajectory_gmacs``."""
    try:
        rebuilt = suggest_spec(optuna.trial.FixedTrial(trial.params), space, prior)
    except (ValueError, SpecError) as err:
        raise ResultsError(f"trial {trial.number}: cannot rebuild its spec from params ({err})") from None
    recorded = MemeSpec.from_json(trial.user_attrs["spec"]) if "spec" in trial.user_attrs else None
    differences = []
    if recorded is None:
        differences.append("no recorded spec")
    elif recorded.to_dict() != rebuilt.to_dict():
        keys = [k for k, v in rebuilt.to_dict().items() if recorded.to_dict().get(k) != v]
        differences.append(f"spec differs in {', '.join(keys)}")
    if not check_cost:
        return TrialSpec(trial.number, rebuilt, recorded, tuple(differences))
    cost = cost_of(rebuilt, sampling_steps)
    if "params_total" in trial.user_attrs and trial.user_attrs["params_total"] != cost.params:
        differences.append(f"params {cost.params} != recorded {trial.user_attrs['params_total']}")
    gmacs = trial.user_attrs.get("trajectory_gmacs")
    if gmacs is not None and not math.isclose(gmacs, cost.trajectory_macs / 1e9, rel_tol=1e-9):
        differences.append(f"trajectory GMACs {cost.trajectory_macs / 1e9:.6g} != recorded {gmacs:.6g}")
    return TrialSpec(trial.number, rebuilt, recorded, tuple(differences))


def spec_of(trial: FrozenTrial, space: SearchSpace, prior: MemeSpec | None) -> MemeSpec | None:
    """The spec a trial trained (recorded), else rebuilt from its params, else None."""
    if "spec" in trial.user_attrs:
        return MemeSpec.from_json(trial.user_attrs["spec"])
    try:
        return suggest_spec(optuna.trial.FixedTrial(trial.params), space, prior)
    except (ValueError, SpecError, MemekitError):
        return None
