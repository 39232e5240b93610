"""Study storage: journal file (default, one machine), PostgreSQL (several machines), SQLite (one
worker only). Passwords never reach a log: use :func:`redact_url` whenever a URL is printed."""

from __future__ import annotations

import re
from pathlib import Path

import optuna

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


def open_storage(url: str | None, study_dir: Path, workers: int = 1, heartbeat_interval: int = 30,
                 grace_period: int = 120, max_retries: int = 2) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``url`` (None = ``STUDY_DIR/study.journal``).

    PostgreSQL studies get Optuna's heartbeat and ``RetryFailedTrialCallback``; journal studies
    get memekit's own heartbeat (see :mod:`memekit.search.study`).
    """
    kind = storage_kind(url)
    if kind == "sqlite" and workers > 1:
        raise StorageError(f"SQLite cannot take {workers} concurrent writers ('database is locked'): use the "
                           "default journal file or postgresql://")
    if kind == "journal":
        path = journal_path(url, study_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if kind == "postgresql":
        _require_postgres_driver()
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries)
        return _rdb(postgres_url(url), shown=url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=callback)
    return _rdb(url, shown=url)


def postgres_url(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` (SQLAlchemy 2.1 would pick psycopg 3 instead);
    a URL that names its driver is kept as it is."""
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url, flags=re.IGNORECASE)


def _rdb(url: str, shown: str, **kwargs) -> optuna.storages.RDBStorage:
    """RDBStorage for ``url``; errors name ``shown`` (the URL as the user wrote it), redacted."""
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except Exception as err:  # noqa: BLE001 - sqlalchemy raises many types
        reason = redact_url(str(err).splitlines()[0])[:200]
        raise StorageError(f"cannot open storage {redact_url(shown)}: {reason}") from None


def _require_postgres_driver() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise StorageError("PostgreSQL storage needs the psycopg2 driver: pip install 'memekit[postgres]'") from None
