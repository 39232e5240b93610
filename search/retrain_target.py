"""How a retrained run is scored (``memekit fidelity --target``): :data:`TARGETS` and
:class:`Target`.

Torch-free, so that the command line offers the targets without importing training;
:func:`memekit.search.retrain.score_run` scores a run by one. :class:`RetrainError`, which every
retraining command raises, is defined here with :class:`Target`, the first thing that raises it.
"""

from __future__ import annotations

from dataclasses import dataclass

from memekit.space.errors import MemekitError

TARGETS = ("val", "kid", "fid")


class RetrainError(MemekitError, ValueError):
    """Trials cannot be retrained or scored as asked (too few trials, a bad budget, ...)."""


@dataclass(frozen=True)
class Target:
    """How a retrained run is scored: ``val`` (its validation loss) or ``kid`` / ``fid`` of ``n``
    DDIM-``steps`` samples against ``reference`` (a source of ``memekit fid``)."""

    kind: str = "val"
    n: int = 1000
    steps: int = 25
    reference: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TARGETS:
            raise RetrainError(f"unknown target {self.kind!r}: choose one of {', '.join(TARGETS)}")
        if self.kind != "val" and (self.n < 2 or self.steps < 1 or not self.reference):
            raise RetrainError("a kid/fid target needs n >= 2 samples, steps >= 1 and a reference "
                               "set")

    @property
    def name(self) -> str:
        return "val_loss" if self.kind == "val" else f"{self.kind}{self.n}"
