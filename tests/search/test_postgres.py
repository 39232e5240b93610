"""Studies on a real PostgreSQL server: parallel workers, SIGKILL recovery, password hygiene.

Needs ``MEMEKIT_TEST_POSTGRES_URL`` (``source .ci/postgres.sh`` starts a throwaway server and
exports it; CI does). Every test uses a fresh study name and deletes its study afterwards.
On PostgreSQL the heartbeat is Optuna's own (``RDBStorage(heartbeat_interval, grace_period)``,
stale trials failed when a worker calls ``study.optimize`` and re-enqueued by
``RetryFailedTrialCallback``), not memekit's journal sweep.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import assert_one_line_error, run_memekit
from optuna.trial import TrialState
from test_workers import Workers, kill_worker_mid_trial, run_parallel_workers, tiny_search

from memekit.search.storage import open_storage, storage_kind
from memekit.search.study import prepare_study

POSTGRES_URL = os.environ.get("MEMEKIT_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(
    not POSTGRES_URL, reason="MEMEKIT_TEST_POSTGRES_URL is not set: `source .ci/postgres.sh` starts a throwaway "
                             "PostgreSQL server and exports it (CI does)")

def with_psycopg2(url: str) -> str:
    """``postgresql://...`` -> ``postgresql+psycopg2://...`` (the driver memekit checks for)."""
    return re.sub(r"^postgres(ql)?(\+[a-z0-9_]+)?://", "postgresql+psycopg2://", url)


def password_of(url: str) -> str:
    match = re.match(r"^[^:]+://[^:/@]+:([^@/]+)@", url)
    assert match, "MEMEKIT_TEST_POSTGRES_URL must carry a password"
    return match.group(1)


@pytest.fixture
def study_name() -> Iterator[str]:
    name = f"memekit-test-{uuid.uuid4().hex[:12]}"
    yield name
    storage = optuna.storages.RDBStorage(with_psycopg2(POSTGRES_URL))
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    finally:
        storage.remove_session()
        storage.engine.dispose()


def test_documented_postgresql_url_opens(tmp_path: Path) -> None:
    assert storage_kind(POSTGRES_URL) == "postgresql"
    storage = open_storage(POSTGRES_URL, tmp_path, workers=2)
    assert isinstance(storage, optuna.storages.RDBStorage)


def test_three_workers_on_postgres_finish_exactly_n_trials(tmp_path: Path, workers: Workers,
                                                          study_name: str) -> None:
    config = tiny_search(tmp_path / "study", study_name=study_name, storage=with_psycopg2(POSTGRES_URL),
                         n_trials=6, workers=3, warm_start=("meme-paper",), heartbeat_interval=1, grace_period=60)
    run_parallel_workers(workers, config)
    assert not (tmp_path / "study" / "study.journal").exists()


def test_sigkilled_postgres_worker_is_recovered_by_the_next_worker(tmp_path: Path, workers: Workers,
                                                                  study_name: str) -> None:
    """Rerun after the grace period: Optuna fails the stale trial at the start of ``optimize`` and
    RetryFailedTrialCallback re-enqueues its parameters."""
    config = tiny_search(tmp_path / "study", study_name=study_name, storage=with_psycopg2(POSTGRES_URL),
                         n_trials=2, heartbeat_interval=1, grace_period=3)
    trials = kill_worker_mid_trial(workers, config, other_worker_waiting=False,
                                   rerun_delay=config.grace_period + 2 * config.heartbeat_interval)
    killed = next(t for t in trials if t.state == TrialState.FAIL)
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.system_attrs["retry_history"] == [killed.number]


def test_sigkilled_postgres_worker_is_recovered_by_a_waiting_worker(tmp_path: Path, workers: Workers,
                                                                   study_name: str) -> None:
    config = tiny_search(tmp_path / "study", study_name=study_name, storage=with_psycopg2(POSTGRES_URL),
                         n_trials=2, heartbeat_interval=1, grace_period=3)
    kill_worker_mid_trial(workers, config, other_worker_waiting=True)


def test_wrong_password_never_printed(tmp_path: Path) -> None:
    """A reachable server that rejects the password: one-line error, the password not echoed."""
    url = re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:sekrit@", with_psycopg2(POSTGRES_URL))
    result = run_memekit("search", tmp_path / "study", "--storage", url, "--space", "tiny", "--trials", "1",
                         "--warm-start", "", "--workers", "2")
    assert_one_line_error(result.returncode, result.stderr, contains="cannot open storage")
    assert "sekrit" not in result.stdout + result.stderr
    assert "***" in result.stderr


def test_study_attributes_do_not_hold_the_password(tmp_path: Path, study_name: str) -> None:
    config = tiny_search(tmp_path / "study", study_name=study_name, storage=with_psycopg2(POSTGRES_URL))
    study = prepare_study(config)
    password = password_of(POSTGRES_URL)
    assert study.user_attrs["memekit_config"]["study_name"] == study_name
    leaked = password in json.dumps(study.user_attrs)  # not in the assertion: keep it out of CI logs
    assert not leaked, "the study's user attributes hold the database password"
