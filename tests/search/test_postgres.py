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
from test_launcher import fake  # noqa: F401 - the fixture of the launcher tests
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


# ---- the launcher and stops, on PostgreSQL ------------------------------------------------------------
def test_launcher_fails_and_retries_a_killed_workers_trial_at_once_on_postgres(
        tmp_path: Path, fake, study_name: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811 - the fixture
        capsys: pytest.CaptureFixture[str]) -> None:
    """As test_launcher's journal test: the launcher fails the dead worker's trial itself, long before
    Optuna's heartbeat would (grace period 600 s), and restarts the worker."""
    import datetime
    import signal as signals

    from test_launcher import in_thread, trials_of, wait_until
    from test_launcher import tiny_search as launcher_search

    from memekit.search.workers import run_search

    monkeypatch.setenv("FAKE_HANG_ONCE", str(fake.hang))
    killed: dict = {}

    def kill_the_hanging_worker() -> None:
        if wait_until(lambda: fake.hang.is_file() and fake.hang.read_text() != "", 300):
            killed["at"] = datetime.datetime.now()
            os.kill(int(fake.hang.read_text()), signals.SIGKILL)

    config = launcher_search(tmp_path / "study", study_name=study_name, storage=with_psycopg2(POSTGRES_URL))
    killer = in_thread(kill_the_hanging_worker)
    run_search(config, progress=False)
    killer.join(timeout=5)
    out = capsys.readouterr().out
    trials = trials_of(config)
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert dead.user_attrs["failure_reason"] == "its worker was killed by SIGKILL"
    assert (dead.datetime_complete - killed["at"]).total_seconds() < 10
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == config.n_trials
    assert "was killed by SIGKILL" in out and "restarted as pid" in out
    assert password_of(POSTGRES_URL) not in out


def test_a_paused_trial_outlives_the_grace_period_on_postgres(tmp_path: Path, study_name: str) -> None:
    """A paused trial waits in the queue: Optuna's stale-trial check (RUNNING trials only) never fails
    it, however long the pause; the rerun resumes the same trial in its folder."""
    import time

    from memekit.search.study import PAUSED_KEY, Seams
    from memekit.search.train import TrainResult
    from memekit.search.train_errors import TrainingInterrupted
    from memekit.search.workers import SearchPaused, run_search

    calls: list[str] = []

    def stopped_first(spec, config, run_dir, *args, **kwargs):
        calls.append(Path(run_dir).name)
        if len(calls) == 1:
            raise TrainingInterrupted("SIGTERM at step 3: checkpoint written", 143)
        return TrainResult(run_dir=Path(run_dir), steps=config.steps, images_seen=config.images,
                           images_per_expert=[config.images] * spec.n_experts, val={"val_loss": 1.0},
                           checkpoint=None, wall_time_s=0.0, train_images_per_s=1.0)

    config = tiny_search(tmp_path / "study", study_name=study_name, storage=with_psycopg2(POSTGRES_URL),
                         n_trials=2, heartbeat_interval=1, grace_period=2)
    with pytest.raises(SearchPaused, match="trial 0 paused"):
        run_search(config, progress=False, seams=Seams(train=stopped_first))
    time.sleep(config.grace_period + 2 * config.heartbeat_interval)
    run_search(config, progress=False, seams=Seams(train=stopped_first))
    assert calls == ["trial-00000", "trial-00000", "trial-00001"]
    study = optuna.load_study(study_name=study_name, storage=open_storage(config.storage, tmp_path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # no FAIL, no retry
    assert study.trials[0].system_attrs.get(PAUSED_KEY) is None
