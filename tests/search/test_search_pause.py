"""A stopped search is paused, not failed: SIGTERM to ``memekit search`` leaves the running trial in the
queue with its proxy checkpoint, prints one line that says how to continue (no traceback), and the
same command resumes that trial from its checkpoint to the result an uninterrupted run gets."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import error_lines, run_memekit, subprocess_env
from optuna.trial import TrialState

from memekit.search.results import load_study
from memekit.search.study import PAUSED_KEY

STEPS = 40  # proxy steps: the first train log line comes at step 4 (log_every = steps // 10)


def search_args(study_dir: Path) -> list[str]:
    return ["search", str(study_dir), "--space", "tiny", "--data", "builtin:shapes:128", "--trials", "1",
            "--proxy-images", str(16 * STEPS), "--proxy-batch", "16", "--val-images", "16", "--warm-start", "",
            "--device", "cpu", "--seed", "3"]


def trials(study_dir: Path) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return sorted(load_study(study_dir).study.trials, key=lambda t: t.number)


def wait_for_training(proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until the proxy run has logged a training step (its signal handlers are installed then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the search ended before training: {proc.communicate()}")
        if log.is_file() and any(json.loads(line).get("event") == "train" for line in log.read_text().splitlines()
                                 if line.strip()):
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no training step logged within {timeout:.0f} s: {proc.communicate()}")


def test_sigterm_pauses_the_study_and_the_rerun_resumes_the_trial_to_the_uninterrupted_result(tmp_path: Path) -> None:
    study_dir = tmp_path / "stopped"
    run_dir = study_dir / "trials" / "trial-00000"
    proc = subprocess.Popen([sys.executable, "-m", "memekit.search.cli", *search_args(study_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    wait_for_training(proc, run_dir / "log.jsonl", timeout=300)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)

    # paused: exit 128 + 15, one line saying what is left and how to go on, no traceback, no Optuna warning
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "failed with parameters" not in err, err
    assert error_lines(err) == [], err
    last = err.strip().splitlines()[-1]
    assert last.startswith("memekit: paused by SIGTERM: 0/1 trials finished, trial 0 paused (stopped at step "), err
    assert last.endswith("; it resumes from its checkpoint); rerun the same command to continue"), err
    assert [line for line in err.splitlines() if line.startswith("memekit:")] == [last]
    (paused,) = trials(study_dir)
    assert paused.state == TrialState.WAITING  # back in the queue, not FAIL
    stopped_at = int(paused.system_attrs[PAUSED_KEY].removeprefix("stopped at step "))
    assert 0 < stopped_at < STEPS
    assert [p.name for p in (run_dir / "checkpoints").glob("*.pt")] == [f"step-{stopped_at:09d}.pt"]

    # the same command continues it: the same trial, resumed from its checkpoint, completes
    rerun = run_memekit(*search_args(study_dir), timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"0/1 trials finished, trial 0 paused (stopped at step {stopped_at}" in rerun.stdout.splitlines()[0]
    assert "trial 0 complete: val_loss " in rerun.stdout and f"resumed from step {stopped_at}" in rerun.stdout
    (resumed,) = trials(study_dir)
    assert resumed.state == TrialState.COMPLETE and resumed.params == paused.params
    assert resumed.user_attrs["proxy_resumed_from_step"] == stopped_at
    assert not (run_dir / "checkpoints").exists()  # dropped once the trial completed (as for any trial)

    # ... to exactly the values of a study that was never stopped
    whole = run_memekit(*search_args(tmp_path / "whole"), timeout=600)
    assert whole.returncode == 0, whole.stderr
    (uninterrupted,) = trials(tmp_path / "whole")
    assert uninterrupted.params == resumed.params
    assert uninterrupted.values == resumed.values
    assert uninterrupted.user_attrs["val_loss"] == resumed.user_attrs["val_loss"]
