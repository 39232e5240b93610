"""``memekit train`` says what it does: status lines instead of progress bars in a pipe, which step
a run resumes from, a refusal when the settings of the checkpoint change, honest counts on a
finished run."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import DATA, assert_one_line_error, read_log, run_memekit

from memekit.space.progress import progress_enabled

TRAIN = ("--data", DATA, "--batch", "8", "--val-images", "16", "--sample-every", "0", "--sample-steps", "2",
         "--device", "cpu")
STATUS = re.compile(r"^step (\d+)/(\d+)  images [\d,]+ \([\d,]+/expert\)  loss [\d.]+  lr [\d.e+-]+  [\d.]+ img/s  "
                    r"elapsed \d+:\d\d:\d\d  eta \d+:\d\d:\d\d$", re.M)


def test_piped_train_prints_a_status_line_every_log_every_steps(spec_file, tmp_path: Path) -> None:
    result = run_memekit("train", spec_file(), "--out", tmp_path / "run", "--images", "64", "--log-every", "3", *TRAIN)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr
    steps = [int(m.group(1)) for m in STATUS.finditer(result.stderr)]
    assert steps == [3, 6, 8]  # every 3 steps of 8, and the last one
    assert [r["step"] for r in read_log(tmp_path / "run") if r["event"] == "train"] == steps


def test_second_run_says_it_resumes_and_a_changed_batch_is_refused(spec_file, tmp_path: Path) -> None:
    spec, run = spec_file(), tmp_path / "run"
    assert run_memekit("train", spec, "--out", run, "--images", "32", *TRAIN).returncode == 0
    again = run_memekit("train", spec, "--out", run, "--images", "32", *TRAIN)
    assert again.returncode == 0, again.stderr
    assert f"resuming {run} from step 4 (checkpoint {run}/checkpoints/step-000000004.pt)" in again.stderr
    assert f"{run} was trained to step 4 before (32 images in total, 16 per expert): nothing left to train" in \
        again.stdout
    assert "img/s" not in again.stdout  # no throughput of a call that trained nothing

    log = (run / "log.jsonl").read_text()
    changed = run_memekit("train", spec, "--out", run, "--images", "32", *TRAIN[:2], "--batch", "16", *TRAIN[4:])
    line = assert_one_line_error(changed.returncode, changed.stderr, contains="batch 8, this command gives 16")
    assert "--batch 8" in line and "--allow-config-change" in line
    assert (run / "log.jsonl").read_text() == log  # refused before anything was written


def test_allow_config_change_extends_the_budget_and_logs_it(spec_file, tmp_path: Path) -> None:
    spec, run = spec_file(), tmp_path / "run"
    assert run_memekit("train", spec, "--out", run, "--images", "32", *TRAIN).returncode == 0
    refused = run_memekit("train", spec, "--out", run, "--images", "48", *TRAIN)
    assert_one_line_error(refused.returncode, refused.stderr, contains="images 32, this command gives 48")
    longer = run_memekit("train", spec, "--out", run, "--images", "48", "--allow-config-change", *TRAIN)
    assert longer.returncode == 0, longer.stderr
    assert "changed settings: images 32 -> 48" in longer.stderr
    assert "trained to step 6: 48 images in total, 24 per expert; 16 in this run at" in longer.stdout
    events = read_log(run)
    assert {"event": "config_changed", "step": 4, "changes": {"images": [32, 48]}} in events
    assert json.loads((run / "config.json").read_text())["images"] == 48


@pytest.mark.parametrize("env, tty, expected", [("", True, True), ("1", True, False), ("", False, False),
                                                ("0", True, True)])
def test_bars_only_on_a_terminal_and_without_tqdm_disable(monkeypatch: pytest.MonkeyPatch, env: str, tty: bool,
                                                          expected: bool) -> None:
    monkeypatch.setenv("TQDM_DISABLE", env)
    monkeypatch.setattr(sys, "stderr", type("Stream", (), {"isatty": lambda self: tty, "write": print})())
    assert progress_enabled(True) is expected
    assert progress_enabled(False) is False
