"""What defines a study: :class:`SearchConfig`, and the rules for resuming one.

A study's settings fall in three groups (:attr:`SearchConfig.IDENTITY`, :attr:`SearchConfig.INVOCATION`
and the rest, :meth:`SearchConfig.settings`). Identity settings decide what a trial measures and never
change (:func:`check_identity`); invocation settings say where one invocation runs and may differ
between invocations; the others change only with ``update=True`` (:func:`check_resume`), recorded in
the study's user attr ``memekit_changes`` (:func:`record_changes`). A config saved before a setting
existed counts as that setting's :attr:`SearchConfig.LEGACY` value. :func:`search_config` starts an
invocation from the settings stored in ``STUDY_DIR/search_config.json`` (:func:`stored_config`).

Opening, planning and preparing a study live in :mod:`memekit.search.study`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memekit.analysis.data import BUILTIN_PREFIX, DEFAULT_BACKGROUND, check_background
from memekit.analysis.device import MIXED_PRECISION, resolve_device
from memekit.space.errors import MemekitError, checked_fields
from memekit.space.spec import PRECONDITIONINGS

from .storage_url import redact_url, storage_kind
from .train_config import TrainConfig

if TYPE_CHECKING:
    import optuna

OBJECTIVES = ("multi", "single")
QUALITIES = ("val", "val-rel", "kid", "fid")
COSTS = ("macs", "latency")
OPTUNA_SAMPLERS = ("tpe", "nsga2", "gp", "random")
PRUNERS = ("none", "median", "hyperband", "wilcoxon")
# the baselines a study can enqueue before its sampler proposes (built by memekit.search.warmstart)
WARM_STARTS = ("prior", "meme-paper", "multi-same", "single-large", "single-small")
STORAGE_ENV = "MEMEKIT_STORAGE"  # default --storage; also how workers receive the URL with its password
CONFIG_FILE = "search_config.json"


class SearchError(MemekitError, ValueError):
    """A study cannot be created, joined or run."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a study (saved as ``search_config.json`` and in the study)."""

    study_dir: str
    study_name: str = "memekit"
    storage: str | None = None
    space: str = "meme"
    resolution: int | None = None
    data: str = "builtin:shapes"
    n_trials: int = 20
    objective: str = "multi"
    quality: str = "val"
    preconditioning: str = "wiener"  # measured in benchmarks/RESULTS.md (issue 10); studies before it: "none"
    cost: str = "macs"
    sampler: str = "tpe"
    pruner: str = "none"
    max_macs: float | None = None  # budget on mean MACs per sampling step
    max_params: int | None = None  # budget on total parameters (all experts)
    sampling_steps: int = 50  # DDIM steps of the costed trajectory
    proxy_images: int = 10_000
    proxy_batch: int = 64
    proxy_lr: float = 2e-4
    proxy_warmup_images: int = 1_000
    val_images: int = 256
    val_every: int = 0  # proxy validation every K steps (single-objective pruning); 0 = at the end
    fid_n: int = 1000
    fid_steps: int = 50
    seed: int = 0
    workers: int = 1
    gpus: tuple[str, ...] | None = None
    machine_rank: int = 0
    warm_start: tuple[str, ...] = ("prior", "meme-paper", "multi-same")
    prior: str | None = None  # --prior: memekit spectrum's prior_spec.json; None: recomputed from the training split
    max_retries: int = 2
    heartbeat_interval: int = 30
    grace_period: int = 120
    device: str | None = None
    mixed_precision: str = "no"
    keep_proxy_checkpoints: bool = False
    # what transparent pixels of the data become (r, g, b); studies made before it: the default, the same data
    background: tuple[int, int, int] = DEFAULT_BACKGROUND

    def __post_init__(self) -> None:
        for name in ("gpus", "warm_start"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        try:
            object.__setattr__(self, "background", check_background(self.background))
        except MemekitError as err:
            raise SearchError(str(err)) from None
        choices = {"objective": OBJECTIVES, "quality": QUALITIES, "cost": COSTS, "sampler": OPTUNA_SAMPLERS,
                   "pruner": PRUNERS, "mixed_precision": MIXED_PRECISION, "preconditioning": PRECONDITIONINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SearchError(f"unknown {name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name in ("n_trials", "workers", "proxy_images", "proxy_batch", "fid_n", "fid_steps", "sampling_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SearchError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.max_macs is not None and not (self.max_macs > 0 and math.isfinite(self.max_macs)):
            raise SearchError(f"max_macs must be a positive number of MACs per step, got {self.max_macs!r}")
        bad = [w for w in self.warm_start if w not in WARM_STARTS]
        if bad:
            raise SearchError(f"unknown warm start {bad[0]!r}: choose from {', '.join(WARM_STARTS)}")
        if self.pruner != "none" and self.objective == "multi":
            raise SearchError("Optuna cannot prune multi-objective studies: use --objective single with a pruner, "
                              "or --pruner none")
        storage_kind(self.storage)  # validates the scheme

    # keys that must match when a study is resumed or joined: they decide what a trial measures
    IDENTITY = ("space", "resolution", "data", "objective", "quality", "preconditioning", "cost", "max_macs",
                "max_params", "sampling_steps", "proxy_images", "proxy_batch", "proxy_lr", "proxy_warmup_images",
                "val_images", "fid_n", "fid_steps", "seed", "prior", "background")
    # where and how one invocation runs: free to differ between invocations and machines
    INVOCATION = ("study_dir", "study_name", "storage", "workers", "gpus", "machine_rank", "device")

    def identity(self) -> dict[str, Any]:
        """The settings that must match when a study is resumed or joined (studies made before a
        setting existed stored no value for it: they count as its default or :attr:`LEGACY` value)."""
        return {k: getattr(self, k) for k in self.IDENTITY}

    def settings(self) -> dict[str, Any]:
        """The study's other settings (trials, sampler, pruner, warm start, retries, ...): changing
        one of an existing study needs ``update=True`` and is recorded (:func:`prepare_study`)."""
        fixed = {*self.IDENTITY, *self.INVOCATION}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in fixed}

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the storage password replaced by ``***`` (for files, studies, logs)."""
        data = self.to_dict()
        if data["storage"]:
            data["storage"] = redact_url(data["storage"])
        return data

    # what a study made before a setting existed measured: a stored config without the key means this
    # value, not today's default (preconditioning became a setting, defaulting to "wiener", later)
    LEGACY = {"preconditioning": "none", "quality": "val"}

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> SearchConfig:
        """:meth:`from_dict` of a saved config, a setting it lacks counting as :attr:`LEGACY`'s value."""
        return cls.from_dict({**cls.LEGACY, **data} if isinstance(data, dict) else data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """The inverse of :meth:`to_dict`; a one-line :class:`SearchError` for a key it does not know."""
        return cls(**checked_fields(cls, data, "a search config", "search setting", SearchError))

    def run_device(self) -> str:
        """``device``, or cuda when this machine has it, else cpu."""
        return self.device or str(resolve_device(None))

    def proxy_config(self, device: str | None = None) -> TrainConfig:
        """The proxy training every trial gets: same data, seed and image budget."""
        return TrainConfig(data=self.data, images=self.proxy_images, batch=self.proxy_batch, lr=self.proxy_lr,
                           warmup_images=self.proxy_warmup_images, seed=self.seed, val_images=self.val_images,
                           val_every=self.val_every, sample_every=0, sample_count=8, sample_steps=20,
                           checkpoint_every=0,
                           keep_last=1, log_every=max(1, self.proxy_images // self.proxy_batch // 10),
                           mixed_precision=self.mixed_precision, device=device or self.device,
                           background=self.background)

    def metric_names(self) -> list[str]:
        quality = {"val": "val_loss", "val-rel": "val_rel"}.get(self.quality, f"{self.quality}{self.fid_n}")
        cost = "trajectory_gmacs" if self.cost == "macs" else "trajectory_latency_ms"
        return [quality, cost] if self.objective == "multi" else [quality]


# ---- resuming: what may change and what may not ---------------------------------------------------
def _differences(wanted: dict[str, Any], stored: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored, wanted)}`` where they differ (a key the study did not store counts as its
    default, or its :attr:`SearchConfig.LEGACY` value: the setting is newer than the study)."""
    defaults = {**SearchConfig(study_dir="").to_dict(), **SearchConfig.LEGACY}
    wanted = json.loads(json.dumps(wanted))
    return {k: (stored.get(k, defaults[k]), v) for k, v in wanted.items()
            if not _same_setting(k, stored.get(k, defaults[k]), v)}


def _same_setting(key: str, old: Any, new: Any) -> bool:
    """Equal settings; a data path counts as the same when both name the same file or folder (a study
    made with ``/abs/faces`` resumes with ``../faces`` from another folder)."""
    if old == new:
        return True
    if key not in ("data", "prior") or not all(isinstance(v, str) and not v.startswith(BUILTIN_PREFIX)
                                               for v in (old, new)):
        return False
    return Path(old).expanduser().resolve() == Path(new).expanduser().resolve()


def check_identity(config: SearchConfig, stored: dict[str, Any]) -> None:
    """A one-line :class:`SearchError` when ``config`` measures trials differently from the study
    whose stored config is ``stored``."""
    diff = _differences(config.identity(), stored)
    if diff:
        key, (old, new) = next(iter(diff.items()))
        raise SearchError(f"study {config.study_name!r} exists with a different {key} ({old!r}, this command "
                          f"gives {new!r}): use another --study-name or STUDY_DIR, or the same settings")


def check_resume(config: SearchConfig, study: optuna.Study, update: bool) -> dict[str, tuple[Any, Any]]:
    """The settings ``config`` changes in the existing ``study``: identity settings never change, the
    others only with ``update``; ``{key: (stored, new)}``."""
    stored = study.user_attrs.get("memekit_config") or {}
    check_identity(config, stored)
    changes = _differences(config.settings(), stored)
    if changes and not update:
        key, (old, new) = next(iter(changes.items()))
        raise SearchError(f"study {config.study_name!r} has {key} {old!r} and this command gives {new!r}: pass "
                          "--update to change it (recorded in the study), or leave the option out to resume with "
                          "the stored settings")
    return changes


def record_changes(study: optuna.Study, config: SearchConfig, changes: dict[str, tuple[Any, Any]]) -> None:
    """Store ``config`` as the study's config and append ``changes`` (with the time) to the user
    attr ``memekit_changes``."""
    history = list(study.user_attrs.get("memekit_changes", []))
    history.append({"time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "changes": {k: [old, new] for k, (old, new) in changes.items()}})
    study.set_user_attr("memekit_changes", history)
    study.set_user_attr("memekit_config", config.public_dict())


def stored_config(study_dir: str | Path) -> SearchConfig | None:
    """The config ``memekit search`` saved in ``STUDY_DIR/search_config.json`` (None: no study there)."""
    path = Path(study_dir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SearchError(f"{path} is not valid JSON ({err}): repair it or use another STUDY_DIR") from None
    try:
        return SearchConfig.from_stored(data)
    except SearchError as err:
        raise SearchError(f"{path}: {err}") from None


def search_config(study_dir: str | Path, **given: Any) -> SearchConfig:
    """The config of an invocation on ``study_dir``: the stored one (when the folder holds a study)
    with the ``given`` settings replacing its own, else the defaults with ``given``; a stored
    storage URL lost its password, so it must be given again (``--storage`` or ``$MEMEKIT_STORAGE``)."""
    stored = stored_config(study_dir)
    data = {**(stored.to_dict() if stored else {}), **given, "study_dir": str(study_dir)}
    if data.get("storage") and ":***@" in data["storage"]:
        raise SearchError("the study's storage URL is stored without its password: pass --storage URL "
                          f"(or set {STORAGE_ENV})")
    return SearchConfig.from_dict(data)
