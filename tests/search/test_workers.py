"""Worker processes on one study: no lost or duplicated trials, and SIGKILLed workers recovered.

Workers run as real processes: ``worker.py`` (written to the test's folder) calls the worker entry
point ``memekit.search.workers.worker_main([CONFIG, INDEX], seams)`` exactly as ``python -m
memekit.search.workers CONFIG INDEX`` does, with a fake proxy run as the seams' ``train``. The fake
logs every call (pid, trial folder) to ``$FAKE_TRAIN_CALLS``; with
``$FAKE_TRAIN_HANG`` set it writes that file and sleeps, so the test can SIGKILL it mid-trial.

The scenario functions (``run_parallel_workers``, ``kill_worker_mid_trial``) take any storage;
``test_postgres.py`` runs them against a real PostgreSQL server.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from memekit.search.storage import storage_kind
from memekit.search.study import FINISHED, SearchConfig, open_study, prepare_study
from memekit.search.workers import run_search

WORKER_SCRIPT = '''\
"""A memekit search worker whose proxy training is a fake (tests only)."""
import json
import os
import sys
import time
from pathlib import Path

from memekit.search.study import Seams
from memekit.search.train import TrainResult
from memekit.search.workers import worker_main


def fake_train(spec, config, run_dir, *args, **kwargs):
    run_dir = Path(run_dir)
    with open(os.environ["FAKE_TRAIN_CALLS"], "a") as log:
        log.write(json.dumps({"pid": os.getpid(), "trial": int(run_dir.name.split("-")[-1])}) + "\\n")
    hang = os.environ.get("FAKE_TRAIN_HANG")
    if hang:
        Path(hang).write_text(str(os.getpid()))
        time.sleep(600)
    time.sleep(float(os.environ.get("FAKE_TRAIN_SECONDS", "0.2")))
    shares = sum(s for e in spec.experts for s in e.attention_share)
    loss = 1.0 + shares / 10 + spec.boundaries[1] / spec.diffusion.timesteps
    return TrainResult(run_dir=run_dir, steps=config.steps, images_seen=config.images,
                       images_per_expert=[config.images] * spec.n_experts,
                       val={"val_loss": loss, "val_loss_quarters": [loss] * 4}, checkpoint=None,
                       wall_time_s=0.0, train_images_per_s=1.0)


sys.exit(worker_main(sys.argv[1:], Seams(train=fake_train)))
'''


def tiny_search(study_dir: Path, **fields: Any) -> SearchConfig:
    base: dict[str, Any] = dict(study_dir=str(study_dir), space="tiny", data="builtin:shapes:128", proxy_images=32,
                                proxy_batch=16, val_images=16, n_trials=3, warm_start=(), device="cpu")
    base.update(fields)
    return SearchConfig(**base)


class Workers:
    """Starts fake-training worker processes for one study and kills what is left at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.script = folder / "worker.py"
        self.script.write_text(WORKER_SCRIPT)
        self.calls_file = folder / "train_calls.jsonl"
        self.procs: list[subprocess.Popen] = []

    def start(self, config: SearchConfig, index: int, seconds: float = 0.2, hang: Path | None = None,
              label: str = "") -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "FAKE_TRAIN_CALLS": str(self.calls_file), "FAKE_TRAIN_SECONDS": str(seconds)}
        env.pop("FAKE_TRAIN_HANG", None)
        env.pop("MEMEKIT_STORAGE", None)
        if config.storage:  # as run_search does: the URL with its password travels in the environment
            env["MEMEKIT_STORAGE"] = config.storage
        if hang is not None:
            env["FAKE_TRAIN_HANG"] = str(hang)
        log = open(self.folder / f"worker-{label or index}-{len(self.procs)}.log", "w")  # noqa: SIM115
        config_file = Path(config.study_dir) / "search_config.json"
        proc = subprocess.Popen([sys.executable, str(self.script), str(config_file), str(index)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def calls(self) -> list[dict[str, int]]:
        if not self.calls_file.is_file():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines() if line.strip()]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.folder.glob("worker-*.log")))

    def wait(self, proc: subprocess.Popen, timeout: float, what: str) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"{what}: the worker did not finish within {timeout:.0f} s\n{self.logs()}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()




def load(config: SearchConfig) -> list[FrozenTrial]:
    study = open_study(config, seed=0, create=False)
    return sorted(study.get_trials(deepcopy=True), key=lambda t: t.number)


def count(trials: list[FrozenTrial], *states: TrialState) -> int:
    return sum(t.state in states for t in trials)


def wait_for(predicate, timeout: float, what: str, workers: Workers) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{workers.logs()}")
        time.sleep(0.2)


def retried_from(trial: FrozenTrial) -> int | None:
    """The trial number this one retries: memekit's journal sweep sets ``retry_of``; Optuna's
    RetryFailedTrialCallback (PostgreSQL) sets the system attribute ``failed_trial``."""
    if "retry_of" in trial.user_attrs:
        return int(trial.user_attrs["retry_of"])
    return trial.system_attrs.get("failed_trial")


# ---- scenarios (also run against PostgreSQL) ----------------------------------------------------
def run_parallel_workers(workers: Workers, config: SearchConfig, n_workers: int = 3) -> list[FrozenTrial]:
    """``n_workers`` processes on one study: exactly ``n_trials`` finished, each trained once."""
    prepare_study(config)
    procs = [workers.start(config, i, seconds=0.5) for i in range(n_workers)]
    codes = [workers.wait(p, 150, f"{n_workers} parallel workers") for p in procs]
    assert codes == [0] * n_workers, workers.logs()
    trials = load(config)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == config.n_trials, [(t.number, t.state) for t in trials]
    assert count(trials, TrialState.RUNNING) == 0
    # a FAIL is only ever a surplus trial (started when enough were running), never trained
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)
    # no two finished trials share parameters, and every proxy run belongs to one finished trial
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == len(finished)
    calls = workers.calls()
    trained = [c["trial"] for c in calls]
    assert sorted(trained) == sorted(t.number for t in finished), (trained, [t.number for t in finished])
    assert len({c["pid"] for c in calls}) >= 2, "the trials should be shared between the worker processes"
    for name in config.warm_start:
        assert sum(t.user_attrs.get("warm_start") == name for t in finished) == 1, name
    return trials


def kill_worker_mid_trial(workers: Workers, config: SearchConfig, other_worker_waiting: bool,
                          rerun_delay: float = 0.0) -> list[FrozenTrial]:
    """SIGKILL a worker during its proxy run; another worker must fail that trial (stale
    heartbeat), run its parameters again and finish the study.

    ``other_worker_waiting``: the second worker already runs and, having finished the other
    trial, waits for the dead one; otherwise the same command is run again ``rerun_delay`` s
    after the kill.
    """
    assert config.n_trials == 2
    prepare_study(config)
    marker = workers.folder / "hanging.pid"
    doomed = workers.start(config, 0, hang=marker, label="doomed")
    wait_for(marker.is_file, 90, "the first worker to start its proxy run", workers)
    second = None
    if other_worker_waiting:
        second = workers.start(config, 1, label="survivor")
        wait_for(lambda: any(c["pid"] == second.pid for c in workers.calls())
                 and count(load(config), TrialState.COMPLETE) == 1, 90,
                 "the second worker to finish the other trial", workers)
    os.kill(doomed.pid, signal.SIGKILL)
    assert doomed.wait(timeout=30) == -signal.SIGKILL
    if second is None:
        time.sleep(rerun_delay)
        second = workers.start(config, 0, label="rerun")
    # a waiting worker has imported everything already; a rerun has to start up first
    budget = config.grace_period + 3 * config.heartbeat_interval + (20 if other_worker_waiting else 45)
    assert workers.wait(second, budget, "recovering the killed trial") == 0, workers.logs()

    trials = load(config)
    killed_number = next(c["trial"] for c in workers.calls() if c["pid"] == doomed.pid)
    killed = trials[killed_number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if retried_from(t) == killed_number]
    assert len(retries) == 1, [(t.number, t.state, retried_from(t)) for t in trials]
    assert retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    assert math.isfinite(retries[0].values[0])
    assert count(trials, *FINISHED) == config.n_trials
    assert count(trials, TrialState.RUNNING) == 0
    # the worker that failed it says so (a journal's sweep and Optuna's stale-trial check alike)
    assert f"trial {killed_number} failed: no heartbeat from its worker for over" in workers.logs(), workers.logs()
    return trials


# ---- journal storage (the default) ------------------------------------------------------------------
def test_three_workers_on_one_journal_finish_exactly_n_trials(tmp_path: Path, workers: Workers) -> None:
    config = tiny_search(tmp_path / "study", n_trials=6, workers=3, warm_start=("meme-paper", "multi-same"),
                         heartbeat_interval=1, grace_period=60)
    trials = run_parallel_workers(workers, config)
    assert storage_kind(config.storage) == "journal"
    assert (tmp_path / "study" / "study.journal").is_file()
    assert len(trials) >= config.n_trials


@pytest.mark.parametrize("other_worker_waiting", [False, True], ids=["rerun-same-command", "other-worker-waiting"])
def test_sigkilled_journal_worker_trial_is_failed_and_retried(tmp_path: Path, workers: Workers,
                                                              other_worker_waiting: bool) -> None:
    config = tiny_search(tmp_path / "study", n_trials=2, heartbeat_interval=1, grace_period=4)
    trials = kill_worker_mid_trial(workers, config, other_worker_waiting)
    killed = next(t for t in trials if t.state == TrialState.FAIL)
    assert killed.user_attrs["failure_reason"].startswith("stale heartbeat")
    assert time.time() - killed.system_attrs["memekit:heartbeat"] > config.grace_period
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == killed.number)
    assert retry.user_attrs["retries"] == 1 and retry.user_attrs["retry_reason"] == "stale heartbeat"


def test_run_search_starts_three_worker_processes(tmp_path: Path, workers: Workers,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """run_search(workers=3) as shipped, except that the ``python -m memekit.search.workers CONFIG
    INDEX --quiet`` it starts is the fake-training worker.py: a launcher stands in for ``sys.executable``
    and refuses any other command line (exit 99)."""
    launcher = tmp_path / "python-launcher"
    launcher.write_text(f"""#!/bin/sh
[ "$1" = "-m" ] && [ "$2" = "memekit.search.workers" ] && [ "$#" -eq 5 ] && [ "$5" = "--quiet" ] || exit 99
echo "$4" >> "{tmp_path / 'launched.txt'}"
exec "{sys.executable}" "{workers.script}" "$3" "$4" "$5"
""")
    launcher.chmod(0o755)
    monkeypatch.setenv("FAKE_TRAIN_CALLS", str(workers.calls_file))
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "0.5")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sys, "executable", str(launcher))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = tiny_search(tmp_path / "study", n_trials=4, workers=3, heartbeat_interval=1, grace_period=60)
    study = run_search(config, progress=False)
    assert sorted((tmp_path / "launched.txt").read_text().split()) == ["0", "1", "2"]
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    assert [t.state for t in finished] == [TrialState.COMPLETE] * config.n_trials
    assert sorted(c["trial"] for c in workers.calls()) == sorted(t.number for t in finished)
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == config.n_trials
