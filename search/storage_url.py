"""What a ``--storage`` value names, without Optuna: its kind (journal file, PostgreSQL, SQLite),
its form with the password hidden, and the journal file it points to.

:mod:`memekit.search.storage` opens the storage; these string rules live apart so that
:class:`~memekit.search.search_config.SearchConfig` checks a URL, and the command line builds its
help, without importing Optuna. Passwords never reach a log: use :func:`redact_url` whenever a URL
is printed.
"""

from __future__ import annotations

import re
from pathlib import Path

from memekit.space.errors import MemekitError

JOURNAL_NAME = "study.journal"
_POSTGRES = re.compile(r"^postgres(ql)?(\+[a-z0-9_]+)?://", re.IGNORECASE)


class StorageError(MemekitError, ValueError):
    """A storage URL is unsupported or unusable."""


def redact_url(url: str) -> str:
    """``scheme://user:secret@host/db`` -> ``scheme://user:***@host/db``."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def storage_kind(url: str | None) -> str:
    """``journal``, ``postgresql`` or ``sqlite``; a one-line error for anything else."""
    if url is None or url.endswith(".journal") or url.startswith("journal:"):
        return "journal"
    if _POSTGRES.match(url):
        return "postgresql"
    if url.startswith("sqlite:///"):
        return "sqlite"
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise StorageError(f"unsupported storage {redact_url(scheme)!r}: use a .journal file (default), "
                       "postgresql://user:password@host/db or sqlite:///file.db (one worker only)")


def journal_path(url: str | None, study_dir: Path) -> Path:
    if url is None:
        return study_dir / JOURNAL_NAME
    return Path(url[len("journal:"):].removeprefix("//") if url.startswith("journal:") else url)


def postgres_url(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` (SQLAlchemy 2.1 would pick psycopg 3 instead);
    a URL that names its driver is kept as it is."""
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url, flags=re.IGNORECASE)
