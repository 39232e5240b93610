"""Files written whole or not at all, and output folders checked before anything is written.

Every file memekit writes (specs, configs, checkpoints, statistics, images, reports) goes through
:func:`atomic_write`: the bytes go to a temporary file in the same folder, which is renamed over
the target only when complete, so a crash or a second writer never leaves half a file. The
temporary name is ``.NAME.PID.RANDOM.tmp``; it never clobbers another writer's temporary file.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import MemekitError


class OutputError(MemekitError, ValueError):
    """An output folder cannot be used (a file, or not empty without ``--overwrite``)."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], fsync: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path`` (``fsync``: flushed to disk), then
    rename it over ``path``; on any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # "x": never clobber another writer's temp file
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) written atomically to ``path``."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON (and a final newline) written atomically to ``path``."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def prepare_output_dir(out: str | os.PathLike, overwrite: bool, clear: Iterable[str] = ()) -> Path:
    """Make ``out`` ready for a command's files: refuse a file, and a non-empty folder unless
    ``overwrite`` (then delete the files matching the glob patterns ``clear``, keeping the rest)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"output folder {str(out)!r} is not empty: pass --overwrite or choose another --out")
        for pattern in clear:
            for path in out.glob(pattern):
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
