"""The settings of a training run (:class:`TrainConfig`, saved as ``config.json`` and in every
checkpoint) and what a run returns (:class:`TrainResult`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memekit.analysis.data import DEFAULT_BACKGROUND, DataError, check_background
from memekit.analysis.device import MIXED_PRECISION
from memekit.space.errors import checked_fields

from .ema_profiles import DEFAULT_SIGMA_RELS, PosthocEMAError, check_sigma_rel
from .train_errors import TrainingError


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run besides the spec (saved as config.json)."""

    data: str = "builtin:shapes"
    images: int = 100_000  # total images seen, all experts together
    batch: int = 64  # images per optimiser step, all experts together
    lr: float = 2e-4
    warmup_images: int = 10_000  # linear learning-rate warm-up, then constant
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # per-expert gradient-norm clip (0 disables)
    ema_decay: float = 0.999  # with warm-up: decay_k = min(ema_decay, (1 + k) / (10 + k))
    mixed_precision: str = "no"
    channels_last: bool = True  # used on CUDA only
    compile: bool = False
    seed: int = 0
    hflip: bool = True  # random horizontal flips of images (latent data sets are never flipped)
    data_limit: int | None = None
    log_every: int = 50
    val_every: int = 500  # steps; 0 = only at the end
    val_images: int = 256
    val_timesteps: int = 16
    sample_every: int = 1000  # steps; 0 = only at the end
    sample_count: int = 16
    sample_steps: int = 50
    checkpoint_every: int = 1000  # steps; 0 = only at the end
    # also a checkpoint once this many minutes of training passed since the last one (or the start):
    # a long run has one within its first minutes whatever checkpoint_every is; 0 = steps only
    checkpoint_minutes: float = 5.0
    keep_last: int = 3
    device: str | None = None  # None = cuda if available, else cpu
    # the colour transparent pixels are composited onto (r, g, b): part of the data a run trains on
    background: tuple[int, int, int] = DEFAULT_BACKGROUND
    # steps between post-hoc EMA snapshots (memekit.search.ema; also at the end); 0 = no tracking
    posthoc_ema_every: int = 0
    posthoc_ema_sigma_rels: tuple[float, ...] = DEFAULT_SIGMA_RELS  # the tracked profiles' lengths

    def __post_init__(self) -> None:
        positive = ("images", "batch", "log_every", "val_images", "val_timesteps", "sample_count",
                    "sample_steps", "keep_last")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TrainingError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_images", "val_every", "sample_every", "checkpoint_every", "seed", "posthoc_ema_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise TrainingError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainingError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise TrainingError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not self.grad_clip >= 0:  # inf: no clipping, as 0
            raise TrainingError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip!r}")
        if not (isinstance(self.checkpoint_minutes, int | float) and self.checkpoint_minutes >= 0
                and math.isfinite(self.checkpoint_minutes)):
            raise TrainingError(f"checkpoint_minutes must be a finite number >= 0 (0: by steps only), got "
                                f"{self.checkpoint_minutes!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise TrainingError(f"unknown mixed precision {self.mixed_precision!r}: choose no, bf16 or fp16")
        if self.images < self.batch:
            raise TrainingError(f"the budget of {self.images} images is smaller than one batch ({self.batch})")
        self._check_tuples()

    def _check_tuples(self) -> None:
        """``background`` and ``posthoc_ema_sigma_rels`` as tuples (JSON gives lists), checked."""
        try:
            object.__setattr__(self, "background", check_background(self.background))
        except DataError as err:
            raise TrainingError(str(err)) from None
        rels = self.posthoc_ema_sigma_rels
        try:
            rels = tuple(check_sigma_rel(v) for v in rels) if isinstance(rels, list | tuple) else None
        except PosthocEMAError as err:
            raise TrainingError(f"posthoc_ema_sigma_rels: {err}") from None
        if rels is None or len(set(rels)) < 2:
            raise TrainingError(f"posthoc_ema_sigma_rels must be two or more different lengths, got "
                                f"{self.posthoc_ema_sigma_rels!r}")
        object.__setattr__(self, "posthoc_ema_sigma_rels", rels)

    @property
    def steps(self) -> int:
        """Optimiser steps of the budget: ``images // batch`` (``memekit train`` refuses a budget that is
        not a whole number of batches, see :func:`whole_batches`; the trainer says when it floors one)."""
        return self.images // self.batch

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples as lists, so a dict read back from JSON compares equal."""
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`; a one-line :class:`TrainingError` for a key it does not know."""
        return cls(**checked_fields(cls, data, "a training config", "training setting", TrainingError))


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    images_seen: int
    images_per_expert: list[int]
    val: dict[str, Any]
    checkpoint: Path | None
    wall_time_s: float
    train_images_per_s: float  # of this call (0 when it trained nothing)
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None  # the step this call resumed from (None: a new run)
    images_trained: int | None = None  # by this call (0: the run had reached its budget before)


def whole_batches(images: int, batch: int) -> None:
    """A one-line :class:`TrainingError` unless ``images`` is a whole number of batches of ``batch``
    (a budget is never rounded silently): it names both fixes, the nearest ``--images`` and ``--steps``."""
    if images % batch == 0:
        return
    down, up = images // batch * batch, -(-images // batch) * batch
    fixes = f"--images {up}" if down == 0 else f"--images {down} or {up}"
    raise TrainingError(f"--images {images} is not a whole number of batches of --batch {batch} "
                        f"({images / batch:,.2f} steps): give {fixes}, or the budget as --steps {up // batch} "
                        "(memekit never rounds a budget)")
