"""Progress bars that behave in pipes and logs.

A bar is drawn only when it was asked for, ``$TQDM_DISABLE`` is not set and stderr is a terminal:
piped or logged output gets no carriage-return updates (long runs print status lines instead,
see :mod:`memekit.search.status`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

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
