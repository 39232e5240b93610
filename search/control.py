"""Control of a training run besides its steps: the process group, signals and the deadline.

:func:`init_distributed` joins the ``torchrun`` process group (one process per GPU; a plain run is
rank 0 of 1). :class:`StopControl` turns SIGINT/SIGTERM and a wall-clock deadline into a request
to stop at a step; several processes agree on it every :data:`STOP_SYNC_STEPS` steps (the largest
request of any rank wins), so all stop at the same step and none waits in a collective alone. The
trainer then writes a checkpoint and raises :meth:`StopControl.error`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as dist

from .train_errors import TrainingInterrupted, TrainingPaused

DEADLINE = 1_000  # a stop request past any signal number: the run's deadline passed
STOP_SYNC_STEPS = 10  # several processes agree on stopping (signal, deadline) every this many steps


@dataclass
class Dist:
    """This process's place in the process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed() -> Dist:
    """Join the process group of ``torchrun`` (``WORLD_SIZE`` > 1): NCCL on GPUs, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


class StopControl:
    """SIGINT/SIGTERM (while :meth:`handling_signals`) and ``deadline`` (a ``time.time()``) as stop
    requests, agreed on by every process of ``group``."""

    def __init__(self, group: Dist, device: torch.device, deadline: float | None = None) -> None:
        self.group, self.device, self.deadline = group, device, deadline
        self.signal: int | None = None  # the signal that arrived (or that another rank received)

    def requested(self, step: int) -> int:
        """0 to go on; a signal number or :data:`DEADLINE` to stop at ``step``."""
        local = self.signal or (DEADLINE if self.deadline is not None and time.time() > self.deadline else 0)
        if self.group.world == 1:
            return local
        if step % STOP_SYNC_STEPS:
            return 0
        request = torch.tensor([local], device=self.device)
        dist.all_reduce(request, op=dist.ReduceOp.MAX)
        agreed = int(request.item())
        if agreed and agreed != DEADLINE:
            self.signal = agreed
        return agreed

    def error(self, request: int, step: int, checkpoint: Path | None) -> TrainingInterrupted:
        """What to raise once the checkpoint of a stop at ``step`` is written."""
        if request == DEADLINE:
            return TrainingPaused(f"time limit reached at step {step}: checkpoint written to {checkpoint}; rerun to "
                                  "resume", 0)
        name = signal.Signals(request).name
        return TrainingInterrupted(f"{name} at step {step}: checkpoint written to {checkpoint}; rerun the same "
                                   "command to resume", 128 + int(request))

    def handling_signals(self) -> _SignalsTo:
        """A context that routes SIGINT/SIGTERM to this control (main thread only)."""
        return _SignalsTo(self)


class _SignalsTo:
    """Route SIGINT/SIGTERM to ``control.signal`` (main thread only), restoring on exit."""

    def __init__(self, control: StopControl) -> None:
        self.control = control
        self.previous: dict[int, object] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.control.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
