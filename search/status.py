"""What a training run shows while it trains: a bar on a terminal, status lines in a log.

On a terminal (and unless ``$TQDM_DISABLE``) a progress bar; otherwise, as EDM2's training loop
does, one plain status line on stderr every ``log_every`` steps (and at the last step), so a piped
or logged run reads line by line, without carriage returns::

    step 40/100  images 320 (160/expert)  loss 0.08123  lr 1.00e-03  245.3 img/s  elapsed 0:00:02  eta 0:00:03
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO

from memekit.space.progress import progress_bar, progress_enabled, say_line


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def status_line(step: int, total: int, images: int, per_expert: int, loss: float, lr: float, images_per_s: float,
                elapsed: float, remaining_steps: int, seconds_per_step: float) -> str:
    """One status line (see the module docstring)."""
    eta = _clock(remaining_steps * seconds_per_step)
    return (f"step {step}/{total}  images {images:,} ({per_expert:,}/expert)  loss {loss:.5f}  lr {lr:.2e}  "
            f"{images_per_s:.1f} img/s  elapsed {_clock(elapsed)}  eta {eta}")


class TrainProgress:
    """The bar or the status lines of one run from step ``initial`` to ``total`` (``show``: either,
    depending on stderr; otherwise nothing)."""

    def __init__(self, total: int, initial: int, show: bool, stream: TextIO | None = None) -> None:
        self.total, self.initial = total, initial
        self.bar = progress_bar(total=total, initial=initial, desc="train", unit="step", progress=show)
        self.lines = show and not progress_enabled(show)
        self.stream = stream
        self.start = time.perf_counter()

    def update(self) -> None:
        self.bar.update(1)

    def log(self, step: int, images: int, per_expert: int, loss: float, lr: float, images_per_s: float) -> None:
        """At a logged step: the bar's postfix, or a status line."""
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}")
        if not self.lines:
            return
        elapsed = time.perf_counter() - self.start
        per_step = elapsed / max(step - self.initial, 1)
        line = status_line(step, self.total, images, per_expert, loss, lr, images_per_s, elapsed, self.total - step,
                           per_step)
        say_line(line, self.stream or sys.stderr)

    def close(self) -> None:
        self.bar.close()
