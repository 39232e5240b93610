"""Progress bars and lines that behave in pipes and logs.

A bar is drawn only when it was asked for, ``$TQDM_DISABLE`` is not set and stderr is a terminal:
piped or logged output gets no carriage-return updates (long runs print status lines instead,
see :mod:`memekit.search.status`).

memekit's long-running functions say what they do through a ``say`` callback; :func:`say_line` (stdout)
and :func:`say_error_line` (stderr) are their defaults, the one place library code writes a line to the
terminal. A caller (the CLI, a notebook, a test) passes its own ``say`` to collect or redirect them.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from tqdm.auto import tqdm


def bars_disabled_by_env() -> bool:
    """``$TQDM_DISABLE`` set to anything but empty, ``0`` or ``false``."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_enabled(progress: bool) -> bool:
    """Whether a progress bar is drawn: ``progress``, no ``$TQDM_DISABLE`` and stderr a terminal."""
    return progress and not bars_disabled_by_env() and stderr_is_terminal()


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless :func:`progress_enabled`."""
    return tqdm(iterable, disable=not progress_enabled(progress), dynamic_ncols=True, **kwargs)


def say_line(line: str, stream: TextIO | None = None) -> None:
    """``line`` on ``stream`` (stdout when None, looked up at the call), flushed at once so that piped
    and logged output keeps pace with the work: the default ``say``."""
    print(line, file=stream if stream is not None else sys.stdout, flush=True)


def say_error_line(line: str) -> None:
    """:func:`say_line` on stderr: status lines and errors, kept apart from a command's results."""
    say_line(line, sys.stderr)
