"""The launcher watches its workers: ``run_search(workers=2)`` and ``memekit search --workers 2``.

The launcher starts ``python -m memekit.search.workers CONFIG INDEX``; here a stand-in for
``sys.executable`` runs ``launched_worker.py`` (written to the test's folder) instead, the real worker
entry point (:func:`memekit.search.workers.worker_main`) with a fake proxy training that behaves like
the trainer: it takes ``STEPS`` steps of ``$FAKE_STEP_S`` s, and on SIGINT/SIGTERM writes a checkpoint
(``RUN_DIR/checkpoint``, the step) and raises :class:`TrainingInterrupted`; a run folder with a
checkpoint resumes from it. With ``$FAKE_HANG_ONCE`` the first call writes its pid there and hangs
(to be SIGKILLed); with ``$FAKE_EXIT`` every call ends its process with that exit code.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from memekit.search.study import PAUSED_KEY, SearchConfig, SearchError, open_study
from memekit.search.workers import SearchPaused, run_search

STEPS = 20

LAUNCHED_WORKER = '''\
"""A memekit search worker whose proxy training is a stoppable fake (tests only)."""
import json
import os
import signal
import sys
import time
from pathlib import Path

from memekit.search.study import Seams
from memekit.search.train import TrainResult
from memekit.search.train_errors import TrainingInterrupted
from memekit.search.workers import worker_main

STEPS = {steps}


def fake_train(spec, config, run_dir, *args, **kwargs):
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "checkpoint"
    start = int(checkpoint.read_text()) if checkpoint.is_file() else 0
    with open(os.environ["FAKE_TRAIN_CALLS"], "a") as log:
        log.write(json.dumps({{"pid": os.getpid(), "trial": int(run_dir.name.split("-")[-1]), "start": start}}) + "\\n")
    if os.environ.get("FAKE_EXIT"):
        os._exit(int(os.environ["FAKE_EXIT"]))
    hang = os.environ.get("FAKE_HANG_ONCE")
    if hang:
        try:
            fd = os.open(hang, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            time.sleep(600)
    stop = []
    previous = {{s: signal.signal(s, lambda n, f: stop.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}}
    try:
        for step in range(start, STEPS):
            if stop:
                checkpoint.write_text(str(step))
                raise TrainingInterrupted(f"{{signal.Signals(stop[0]).name}} at step {{step}}: checkpoint written",
                                          128 + stop[0])
            (run_dir / "progress").write_text(str(step))
            time.sleep(float(os.environ.get("FAKE_STEP_S", "0.02")))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    shares = sum(s for e in spec.experts for s in e.attention_share)
    loss = 1.0 + shares / 10 + spec.boundaries[1] / spec.diffusion.timesteps
    return TrainResult(run_dir=run_dir, steps=STEPS, images_seen=config.images,
                       images_per_expert=[config.images] * spec.n_experts,
                       val={{"val_loss": loss, "val_loss_quarters": [loss] * 4}}, checkpoint=None,
                       wall_time_s=0.0, train_images_per_s=1.0, resumed_from=start or None)


sys.exit(worker_main(sys.argv[1:], Seams(train=fake_train)))
'''


def tiny_search(study_dir: Path, **fields: Any) -> SearchConfig:
    base: dict[str, Any] = dict(study_dir=str(study_dir), space="tiny", data="builtin:shapes:128", proxy_images=32,
                                proxy_batch=16, val_images=16, n_trials=3, workers=2, warm_start=(), device="cpu",
                                heartbeat_interval=1, grace_period=600)  # no sweep: only the launcher can fail trials
    base.update(fields)
    return SearchConfig(**base)


class Fake:
    """The fake workers' files: the calls log, the hang marker, the launched indices."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls_file = folder / "calls.jsonl"
        self.hang = folder / "hanging.pid"
        self.launched = folder / "launched.txt"

    def calls(self) -> list[dict[str, int]]:
        if not self.calls_file.is_file():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines() if line.strip()]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    """``sys.executable`` replaced by a launcher that runs launched_worker.py for ``-m memekit.search.workers``
    (and refuses anything else, exit 99); the fake training's settings in the environment."""
    files = Fake(tmp_path)
    script = tmp_path / "launched_worker.py"
    script.write_text(LAUNCHED_WORKER.format(steps=STEPS))
    launcher = tmp_path / "python-launcher"
    launcher.write_text(f"""#!/bin/sh
[ "$1" = "-m" ] && [ "$2" = "memekit.search.workers" ] || exit 99
echo "$4" >> "{files.launched}"
exec "{sys.executable}" "{script}" "$3" "$4" "$5"
""")
    launcher.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(launcher))
    monkeypatch.setenv("FAKE_TRAIN_CALLS", str(files.calls_file))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("FAKE_HANG_ONCE", "FAKE_EXIT", "FAKE_STEP_S"):
        monkeypatch.delenv(name, raising=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield files


def in_thread(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def trials_of(config: SearchConfig) -> list[optuna.trial.FrozenTrial]:
    return sorted(open_study(config, seed=0, create=False).get_trials(deepcopy=True), key=lambda t: t.number)


def test_a_killed_worker_is_noticed_at_once_its_trial_retried_and_the_worker_restarted(
        tmp_path: Path, fake: Fake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from memekit.search.cli import main

    monkeypatch.setenv("FAKE_HANG_ONCE", str(fake.hang))
    killed: dict[str, Any] = {}

    def kill_the_hanging_worker() -> None:
        if wait_until(lambda: fake.hang.is_file() and fake.hang.read_text() != "", 300):
            killed["pid"] = int(fake.hang.read_text())
            killed["at"] = datetime.datetime.now()
            os.kill(killed["pid"], signal.SIGKILL)

    config = tiny_search(tmp_path / "study")
    killer = in_thread(kill_the_hanging_worker)
    code = main(["search", config.study_dir, "--space", "tiny", "--data", "builtin:shapes:128", "--trials", "3",
                 "--workers", "2", "--proxy-images", "32", "--proxy-batch", "16", "--val-images", "16",
                 "--warm-start", "", "--device", "cpu", "--heartbeat-interval", "1", "--grace-period", "600"])
    killer.join(timeout=5)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "pid" in killed, "no worker hung"

    trials = trials_of(config)
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert dead.user_attrs["failure_reason"] == "its worker was killed by SIGKILL"
    # noticed within seconds (the sweep could not have done it: its grace period is 600 s)
    assert (dead.datetime_complete - killed["at"]).total_seconds() < 10
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["retry_reason"] == "worker died"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]

    lines = out.splitlines()
    said = [line for line in lines if line.startswith("worker ")]
    assert len(said) == 1, out
    expected = (f"(pid {killed['pid']}) was killed by SIGKILL; trial {dead.number} failed and retried as a new "
                "trial; restarted as pid ")
    assert expected in said[0], out
    index = said[0].split()[1]
    assert fake.launched.read_text().split().count(index) == 2  # started, and restarted
    assert lines[-1].startswith("done: 3/3 trials finished; export with: memekit export")  # the true end
    assert "exited with codes" not in out + err and "rerun" not in out + err


def test_sigterm_to_the_launcher_pauses_every_worker_and_the_rerun_resumes_their_trials(
        tmp_path: Path, fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.5")
    config = tiny_search(tmp_path / "study", n_trials=3)

    def stop_once_both_train() -> None:
        def training() -> bool:
            folders = [tmp_path / "study" / "trials" / f"trial-{c['trial']:05d}" for c in fake.calls()]
            return len(folders) == 2 and all((f / "progress").is_file() for f in folders)

        if wait_until(training, 300):
            os.kill(os.getpid(), signal.SIGTERM)  # to the launcher (this process), as `kill PID` would

    stopper = in_thread(stop_once_both_train)
    with pytest.raises(SearchPaused) as info:
        run_search(config, progress=False)
    stopper.join(timeout=5)
    assert info.value.exit_code == 143
    trials = trials_of(config)
    paused = [t for t in trials if t.state == TrialState.WAITING]
    assert len(paused) == 2 and len(trials) == 2  # both running trials paused; none failed, none started after
    reasons = {t.number: t.system_attrs[PAUSED_KEY] for t in paused}
    assert all(r.startswith("stopped at step ") for r in reasons.values())
    assert str(info.value) == ("paused by SIGTERM: 0/3 trials finished, " + ", ".join(
        f"trial {n} paused ({r}; it resumes from its checkpoint)" for n, r in sorted(reasons.items()))
        + ", 1 more to run; rerun the same command to continue")

    monkeypatch.setenv("FAKE_STEP_S", "0.02")
    study = run_search(config, progress=False)
    done = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 3
    resumed = {c["trial"]: c["start"] for c in fake.calls()[2:] if c["trial"] in reasons}
    assert resumed == {n: int(r.removeprefix("stopped at step ")) for n, r in reasons.items()}  # from checkpoints
    assert all(done[n].params == next(t for t in paused if t.number == n).params for n in reasons)


def test_workers_that_cannot_go_on_end_with_what_is_left(tmp_path: Path, fake: Fake,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers that exit with an error are not restarted (their error would repeat); the final message
    says what the study holds and what is left, and that the same command continues it."""
    monkeypatch.setenv("FAKE_EXIT", "2")
    config = tiny_search(tmp_path / "study", n_trials=3, max_retries=0)
    with pytest.raises(SearchError) as info:
        run_search(config, progress=False)
    assert not isinstance(info.value, SearchPaused)
    assert str(info.value) == ("the study stopped with 0/3 trials finished, 3 more to run (worker 0 exited with "
                               "code 2; worker 1 exited with code 2): rerun the same command to continue")
    trials = trials_of(config)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert {t.user_attrs["failure_reason"] for t in trials} == {"its worker exited with code 2"}
    assert sorted(fake.launched.read_text().split()) == ["0", "1"]  # not restarted
