"""Errors that memekit raises on bad user input.

Every entry point (CLI flags, spec JSON, data paths, storage URLs, checkpoints) raises a
:class:`MemekitError` whose message is one line naming the problem and the fix; the CLI prints
it without a traceback and exits with code 2.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class MemekitError(Exception):
    """Base class of user-facing errors (one-line message: what is wrong and how to fix it)."""


class SpecError(MemekitError, ValueError):
    """An architecture or diffusion spec is invalid."""


def checked_fields(cls: type, data: Any, name: str, key: str, error: type[MemekitError] = SpecError,
                   extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``data`` as keyword arguments of the dataclass ``cls`` (or ``extra`` names), else a one-line
    ``error``: "NAME must be a JSON object" or "unknown KEY 'x': allowed are ..."."""
    if not isinstance(data, dict):
        raise error(f"{name} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)} | extra
    unknown = sorted(set(data) - names)
    if unknown:
        raise error(f"unknown {key} {unknown[0]!r}: allowed are {', '.join(sorted(names))}")
    return dict(data)
