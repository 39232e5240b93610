"""Why a training run stopped early: the errors of :mod:`memekit.search.train` (re-exported there)."""

from __future__ import annotations

from memekit.space.errors import MemekitError


class TrainingError(MemekitError):
    """Training cannot go on (bad configuration, divergence, out of memory)."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or inf."""


class OutOfMemory(TrainingError):
    """The device ran out of memory."""


class TrainingInterrupted(TrainingError):
    """SIGINT/SIGTERM: a checkpoint was written, rerun to resume."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TrainingPaused(TrainingInterrupted):
    """The run's deadline passed: a checkpoint was written, rerun to resume."""
