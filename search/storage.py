"""Study storage: journal file (default, one machine), PostgreSQL (several machines), SQLite (one
worker only). Passwords never reach a log: use :func:`redact_url` whenever a URL is printed."""

from __future__ import annotations

import os
from pathlib import Path

import optuna

from .heartbeat import StaleRetry
from .storage_url import (  # noqa: F401 - what a URL names, optuna-free there (re-exported)
    JOURNAL_NAME,
    StorageError,
    journal_path,
    postgres_url,
    redact_url,
    storage_kind,
)

CONNECT_TIMEOUT_S = 10  # a PostgreSQL server that does not answer is reported after this long


def check_journal(path: Path) -> None:
    """A one-line :class:`StorageError` unless the journal file ``path`` can be read and written (or,
    when it does not exist yet, created: its nearest existing folder is writable); writes nothing."""
    if path.exists():
        if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(f"cannot use the journal {path}: it is not a readable and writable file (give "
                               "another --storage or STUDY_DIR)")
        return
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"cannot create the journal {path}: {folder} is not a writable folder (give another "
                           "--storage or STUDY_DIR)")


def open_storage(url: str | None, study_dir: Path, workers: int = 1, heartbeat_interval: int = 30,
                 grace_period: int = 120, max_retries: int = 2) -> optuna.storages.BaseStorage:
    """The Optuna storage for ``url`` (None = ``STUDY_DIR/study.journal``).

    PostgreSQL studies get Optuna's heartbeat and its retry of stale trials
    (:class:`~memekit.search.heartbeat.StaleRetry`); journal studies get memekit's own heartbeat (see
    :mod:`memekit.search.heartbeat`).
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
        callback = StaleRetry(max_retries)  # records what it retries: the sweeping worker says it
        return _rdb(postgres_url(url), shown=url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=callback)
    return _rdb(url, shown=url)


def _rdb(url: str, shown: str, **kwargs) -> optuna.storages.RDBStorage:
    """RDBStorage for ``url``, connected (a server that cannot be reached is reported here, before a
    study is opened or announced); errors name ``shown`` (the URL as the user wrote it), redacted, and
    what to check."""
    engine_kwargs: dict = {"pool_pre_ping": True}
    postgres = storage_kind(shown) == "postgresql"
    if postgres:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as err:  # noqa: BLE001 - sqlalchemy raises many types
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = redact_url(lines[0] if lines else type(err).__name__)[:200]
        fix = ("check that the server runs and accepts connections at that host and port, and the URL's user, "
               "password and database (or leave --storage out for a journal file in STUDY_DIR)" if postgres else
               "check that the file's folder exists and is writable")
        raise StorageError(f"cannot open storage {redact_url(shown)}: {reason}: {fix}") from None


def _require_postgres_driver() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise StorageError("PostgreSQL storage needs the psycopg2 driver: pip install 'memekit[postgres]'") from None
