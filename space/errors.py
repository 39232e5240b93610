"""Errors that memekit raises on bad user input.

Every entry point (CLI flags, spec JSON, data paths, storage URLs, checkpoints) raises a
:class:`MemekitError` whose message is one line naming the problem and the fix; the CLI prints
it without a traceback and exits with code 2.
"""

from __future__ import annotations


class MemekitError(Exception):
    """Base class of user-facing errors (one-line message: what is wrong and how to fix it)."""


class SpecError(MemekitError, ValueError):
    """An architecture or diffusion spec is invalid."""
