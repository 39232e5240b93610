"""Optuna studies over the MEME design space: opening, planning and preparing them.

One study lives in a study folder (``STUDY_DIR``): ``search_config.json``, the journal file (unless
``--storage`` points elsewhere), ``prior_spec.json``, ``trials/trial-NNNNN/`` (proxy runs) and
``artifacts/`` (sample grids, visible in optuna-dashboard).

:class:`~memekit.search.search_config.SearchConfig` is everything that defines a study, with its
resume rules (:mod:`memekit.search.search_config`); :func:`open_study` creates or loads it
(refusing a study made with other settings). :func:`plan_study` checks what a run needs before its
first trial and writes nothing (device and precision, the storage reached, the folder's state, the
data, the space, the prior; ``memekit search --dry-run`` prints it), and :func:`prepare_study`
then writes the config file, the measured
preconditioning and the spectral prior and enqueues the warm start (:mod:`memekit.search.warmstart`).
Trials are run by the objective
(:mod:`memekit.search.objective`) in workers (:mod:`memekit.search.workers`).
**Optuna cannot prune multi-objective studies**: pruners act only with ``--objective single``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from memekit.analysis.data import check_data_source, data_shape, load_data
from memekit.analysis.device import resolve_device
from memekit.analysis.linear import preconditioned_for_data
from memekit.space import DiffusionSpec, MemeSpec, save_spec, spec_cost
from memekit.space.files import atomic_write_json

from .heartbeat import PAUSED_KEY
from .search_config import (
    CONFIG_FILE,
    SearchConfig,
    SearchError,
    check_identity,
    check_resume,
    record_changes,
)

# re-exported: the config's choices and resume rules moved to memekit.search.search_config
from .search_config import COSTS as COSTS
from .search_config import OBJECTIVES as OBJECTIVES
from .search_config import OPTUNA_SAMPLERS as OPTUNA_SAMPLERS
from .search_config import PRUNERS as PRUNERS
from .search_config import QUALITIES as QUALITIES
from .search_config import STORAGE_ENV as STORAGE_ENV
from .search_config import search_config as search_config
from .search_config import stored_config as stored_config
from .searchspace import SearchSpace, load_search_space
from .storage import check_journal, journal_path, open_storage, redact_url, storage_kind
from .train import train
from .warmstart import SAMPLER_STARTUP, enqueue_warm_start, prior_source_text, study_prior

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# group=True, set_metric_names and artifacts are "experimental" in Optuna 5; memekit pins optuna<6
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# ---- samplers and pruners ------------------------------------------------------------------------
def make_sampler(name: str, seed: int, constraints: bool = True) -> optuna.samplers.BaseSampler:
    """The sampler, always explicit and seeded (recorded in the study)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=SAMPLER_STARTUP["tpe"])
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=SAMPLER_STARTUP["nsga2"])
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=SAMPLER_STARTUP["gp"])
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Seams:
    """The functions a study calls for its expensive or stateful parts: the proxy training, the cost
    model, the storage and the sampler. Tests and benchmarks pass their own (a fake training, timed
    wrappers) instead of patching module globals."""

    train: Callable[..., Any] = train
    spec_cost: Callable[..., Any] = spec_cost
    open_storage: Callable[..., optuna.storages.BaseStorage] = open_storage
    make_sampler: Callable[..., optuna.samplers.BaseSampler] = make_sampler


DEFAULT_SEAMS = Seams()


# ---- the study's space (with the measured preconditioning) -------------------------------------
DIFFUSION_FILE = "diffusion.json"


def data_space(config: SearchConfig) -> SearchSpace:
    """``config.space`` built for the study's data: at ``config.resolution`` for images, at the latents'
    size and channel count for a latent data set."""
    shape = data_shape(config.data)
    if not shape.latent:
        return load_search_space(config.space, config.resolution)
    if config.resolution not in (None, shape.side):
        raise SearchError(f"{config.data} holds {shape.channels} x {shape.side} x {shape.side} latents: --resolution "
                          f"must be {shape.side} (or left out)")
    return load_search_space(config.space, shape.side, shape.channels)


def study_space(config: SearchConfig, study_dir: Path | None) -> SearchSpace:
    """The study's search space: :func:`data_space`, with the diffusion spec of
    ``STUDY_DIR/diffusion.json`` (the measured preconditioning) when the study preconditions."""
    space = data_space(config)
    if config.preconditioning == "none":
        return space
    path = (study_dir or Path(config.study_dir)) / DIFFUSION_FILE
    if not path.is_file():
        raise SearchError(f"{path} is missing: the study's preconditioning statistics are made by "
                          "'memekit search' when it prepares the study; rerun it")
    return dataclasses.replace(space, diffusion=DiffusionSpec.from_dict(json.loads(path.read_text())))


PRIOR_FILE = "prior_spec.json"
PRIOR_SOURCE_FILE = "prior_source.json"  # which prior the study seeded and from what (warmstart.study_prior)


def worker_seed(config: SearchConfig, index: int) -> int:
    """Distinct sampler seed per worker: ``seed + 1000 * machine_rank + index`` (a worker that
    joins or resumes a study with ``k`` ended trials adds ``100003 * k``, see
    :func:`memekit.search.workers.run_worker`)."""
    return config.seed + 1000 * config.machine_rank + index


# ---- opening and preparing a study ------------------------------------------------------------------
def study_storage(config: SearchConfig, seams: Seams = DEFAULT_SEAMS) -> optuna.storages.BaseStorage:
    """The study's storage (``config.storage``, or ``STUDY_DIR/study.journal``)."""
    return seams.open_storage(config.storage, Path(config.study_dir), config.workers, config.heartbeat_interval,
                              config.grace_period, config.max_retries)


def open_study(config: SearchConfig, seed: int, create: bool = True, seams: Seams = DEFAULT_SEAMS,
               storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """Create or load the study (in ``storage``, default :func:`study_storage`) with the sampler
    seeded ``seed``; refuse to resume one made with a different configuration."""
    study_dir = Path(config.study_dir)
    storage = storage if storage is not None else study_storage(config, seams)
    sampler, pruner = seams.make_sampler(config.sampler, seed), make_pruner(config.pruner)
    directions = ["minimize", "minimize"] if config.objective == "multi" else ["minimize"]
    try:
        if create:
            study = optuna.create_study(study_name=config.study_name, storage=storage, directions=directions,
                                        sampler=sampler, pruner=pruner, load_if_exists=True)
        else:
            study = optuna.load_study(study_name=config.study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise SearchError(f"no study named {config.study_name!r} in "
                          f"{redact_url(config.storage or str(study_dir))}") from None
    stored = study.user_attrs.get("memekit_config")
    if stored is None:
        study.set_user_attr("memekit_config", config.public_dict())
        study.set_metric_names(config.metric_names())
    else:
        check_identity(config, stored)
    return study


def find_study(config: SearchConfig, seams: Seams = DEFAULT_SEAMS) -> optuna.Study | None:
    """The study of ``config`` if it exists; creates nothing (a missing journal stays missing)."""
    if storage_kind(config.storage) == "journal" and not journal_path(config.storage, Path(config.study_dir)).is_file():
        return None
    try:
        return optuna.load_study(study_name=config.study_name, storage=study_storage(config, seams),
                                 sampler=optuna.samplers.RandomSampler())
    except KeyError:
        return None


# ---- checking a run before it starts ------------------------------------------------------------------


@dataclass(frozen=True)
class StudyProgress:
    """Where a study stands: ``finished`` (complete or pruned) of ``n_trials``, the numbers of the
    running trials and of the trials a stop paused (waiting to resume from their checkpoints, with
    what stopped them), the other queued trials (warm starts, retries) and the failed ones."""

    n_trials: int
    finished: int
    running: tuple[int, ...]
    paused: tuple[tuple[int, str], ...]
    queued: int
    failed: int

    @property
    def done(self) -> bool:
        return self.finished >= self.n_trials

    def text(self) -> str:
        """``2/6 trials finished, trial 3 paused (stopped at step 40; it resumes from its checkpoint), 1
        running, 2 more to run``: what is done and exactly what is left."""
        parts = [f"{self.finished}/{self.n_trials} trials finished"]
        parts += [f"trial {n} paused ({why}; it resumes from its checkpoint)" for n, why in self.paused]
        if self.running:
            parts.append(f"{len(self.running)} running (trial{'s' * (len(self.running) > 1)} "
                         f"{', '.join(map(str, self.running))})")
        left = self.n_trials - self.finished - len(self.paused) - len(self.running)
        if left > 0:
            parts.append(f"{left} more to run")
        return ", ".join(parts)


def study_progress(study: optuna.Study, n_trials: int) -> StudyProgress:
    """The :class:`StudyProgress` of ``study`` towards ``n_trials`` finished trials (surplus trials,
    started when enough were running and never trained, are not counted as failed)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    paused = tuple((t.number, str(t.system_attrs[PAUSED_KEY])) for t in waiting if t.system_attrs.get(PAUSED_KEY))
    return StudyProgress(n_trials=n_trials, finished=sum(t.state in FINISHED for t in trials),
                         running=tuple(t.number for t in trials if t.state == TrialState.RUNNING), paused=paused,
                         queued=len(waiting) - len(paused),
                         failed=sum(t.state == TrialState.FAIL and not t.user_attrs.get("surplus") for t in trials))


def check_device(config: SearchConfig) -> str:
    """The device the proxy runs train on, checked as the training checks it (a CUDA device on a
    machine without CUDA, ``--mixed-precision`` off CUDA or bf16 on a GPU without it, ``--gpus`` this
    machine does not have): a one-line error instead of failed trials."""
    device = resolve_device(config.device)
    if config.mixed_precision != "no" and device.type != "cuda":
        raise SearchError(f"--mixed-precision {config.mixed_precision} needs a CUDA device: use --mixed-precision no "
                          f"on {device}")
    if config.mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise SearchError("--mixed-precision bf16 needs a GPU that supports bf16: use fp16 or no")
    if config.gpus:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = [g for g in config.gpus if int(g) >= count]
        if missing:
            raise SearchError(f"--gpus {','.join(config.gpus)}: this machine has {count} CUDA device(s), so GPU "
                              f"{missing[0]} does not exist: give indices below {count}, or leave --gpus out")
    elif device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SearchError(f"--device {config.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return str(device)


@dataclass(frozen=True)
class StudyPlan:
    """What a run of ``config`` would do, checked by :func:`plan_study` before anything is written."""

    config: SearchConfig
    state: str  # new, resuming (STUDY_DIR and the storage hold the study) or joining (only the storage does)
    where: str  # the storage, password masked
    device: str
    progress: StudyProgress | None  # of the existing study
    changes: dict[str, tuple[Any, Any]]  # settings this run changes (with update)
    images: dict[str, int]  # split -> images (or latents)
    diffusion: DiffusionSpec | None
    prior: MemeSpec | None
    source: dict | None
    notes: tuple[str, ...]  # what the data loader had to say (transparency composited, grey converted)
    prior_notes: tuple[str, ...]  # about the prior (a --prior file that changed since the study was seeded)


def storage_where(config: SearchConfig) -> str:
    """The study's storage as printed: the URL with its password masked, or the journal file."""
    if storage_kind(config.storage) == "journal":
        return str(journal_path(config.storage, Path(config.study_dir)))
    return redact_url(config.storage or "")


def plan_study(config: SearchConfig, seams: Seams = DEFAULT_SEAMS, update: bool = False) -> StudyPlan:
    """Check everything a run of ``config`` needs before its first trial, and write nothing: the device
    and precision (:func:`check_device`), the storage (reached: a database is connected to, a journal
    file must be writable), the study folder's state (a study with other settings is refused, see
    :func:`check_resume`), the data (both splits readable and non-empty), the space, the
    preconditioning and the prior."""
    study_dir = Path(config.study_dir)
    device = check_device(config)
    if storage_kind(config.storage) == "journal":
        check_journal(journal_path(config.storage, study_dir))
    existing = find_study(config, seams)
    changes = check_resume(config, existing, update) if existing is not None else {}
    progress = study_progress(existing, config.n_trials) if existing is not None else None
    state = "new" if existing is None else "resuming" if (study_dir / CONFIG_FILE).is_file() else "joining"
    images, diffusion, prior, source, notes, prior_notes = _plan(config, study_dir)
    return StudyPlan(config, state, storage_where(config), device, progress, changes, images, diffusion, prior,
                     source, tuple(notes), tuple(prior_notes))


def _plan(config: SearchConfig, study_dir: Path) -> tuple[dict[str, int], DiffusionSpec | None, MemeSpec | None,
                                                          dict | None, list[str], list[str]]:
    """Check the space and the data, and make (or read) the measured diffusion spec and the prior with
    its source record and notes (:func:`~memekit.search.warmstart.study_prior`); writes nothing."""
    check_data_source(config.data)
    space = data_space(config)
    resolution = space.base_expert.resolution
    notes: list[str] = []
    images = {"all": len(load_data(config.data, resolution, progress=False, background=config.background,
                                   say=notes.append))}  # what compositing did, said once for the whole source
    for split in ("train", "reference"):  # both splits exist at the space's resolution
        images[split] = len(load_data(config.data, resolution, split=split, progress=False,
                                      background=config.background, say=lambda line: None))
    diffusion = None
    if config.preconditioning != "none":
        path = study_dir / DIFFUSION_FILE
        diffusion = (DiffusionSpec.from_dict(json.loads(path.read_text())) if path.is_file() else
                     preconditioned_for_data(space.diffusion, config.preconditioning, config.data, resolution,
                                             config.background))
        space = dataclasses.replace(space, diffusion=diffusion)
    prior, source, prior_notes = None, None, []
    if "prior" in config.warm_start or space.boundary_mode == "prior":
        stored = study_dir / PRIOR_SOURCE_FILE
        prior, source, prior_notes = study_prior(config, space, study_dir / PRIOR_FILE,
                                                 json.loads(stored.read_text()) if stored.is_file() else None)
    elif config.prior:
        raise SearchError("--prior is given but the study neither warm-starts from the prior nor centres on it: add "
                          "prior to --warm-start, or leave --prior out")
    return images, diffusion, prior, source, notes, prior_notes


def prepare_study(config: SearchConfig, seams: Seams = DEFAULT_SEAMS, update: bool = False,
                  say: Callable[[str], None] | None = None, plan: StudyPlan | None = None) -> optuna.Study:
    """Check the settings, the device, the storage, the space and the data (``plan``, else
    :func:`plan_study`), then create (or resume) the study: config file, measured preconditioning,
    prior spec, warm-start trials. A refused invocation writes nothing. Changing a setting of an
    existing study needs ``update`` and is recorded (:func:`record_changes`; ``say`` hears about it,
    and what the data loader and the prior have to say); its identity settings never change."""
    plan = plan if plan is not None else plan_study(config, seams, update)
    study_dir = Path(config.study_dir)
    changes, prior, source = plan.changes, plan.prior, plan.source
    # ---- everything was checked: from here on the study is written
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(study_dir / CONFIG_FILE, config.public_dict())
    study = open_study(config, worker_seed(config, 0), seams=seams)
    if changes:
        record_changes(study, config, changes)
        if say is not None:
            say("changed study settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    if plan.diffusion is not None and not (study_dir / DIFFUSION_FILE).is_file():
        atomic_write_json(study_dir / DIFFUSION_FILE, plan.diffusion.to_dict())
    if prior is not None and not (study_dir / PRIOR_FILE).is_file():
        save_spec(prior, study_dir / PRIOR_FILE)
    if source is not None and plan.state == "new" and not (study_dir / PRIOR_SOURCE_FILE).is_file():
        atomic_write_json(study_dir / PRIOR_SOURCE_FILE, source)
        study.set_user_attr("memekit_prior", source)
    if say is not None:
        lines = list(plan.notes)
        if source is not None:
            lines += [prior_source_text(source), *plan.prior_notes,
                      *(f"binding: {c}" for c in source.get("constraints", []))]
        for line in lines:
            say(line)
    if not study.trials:
        enqueue_warm_start(study, config, study_space(config, study_dir), prior)
    return study
