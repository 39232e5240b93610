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
    assert_one_line_error(changed.returncode, changed.stderr, contains=(
        f"{run} was trained with --batch 8 (checkpoint step-000000004.pt), this command gives --batch 16: resume "
        "with --batch 8, or pass --allow-config-change"))
    assert (run / "log.jsonl").read_text() == log  # refused before anything was written


def test_a_changed_batch_is_named_when_the_budget_is_given_in_steps(spec_file, tmp_path: Path) -> None:
    """--steps 4 at batch 8 is 32 images, at batch 16 it is 64: the user changed --batch, not --images,
    and the refusal says so (it once said "was trained with images 32, this command gives 64")."""
    spec, run = spec_file(), tmp_path / "run"
    assert run_memekit("train", spec, "--out", run, "--steps", "4", *TRAIN).returncode == 0
    config = (run / "config.json").read_text()
    changed = run_memekit("train", spec, "--out", run, "--steps", "4", *TRAIN[:2], "--batch", "16", *TRAIN[4:])
    line = assert_one_line_error(changed.returncode, changed.stderr,
                                 contains="was trained with --batch 8 (checkpoint step-000000004.pt), this command "
                                          "gives --batch 16")
    assert "images" not in line
    changed = run_memekit("train", spec, "--out", run, "--steps", "4", *TRAIN, "--lr", "0.01", "--seed", "3")
    assert_one_line_error(changed.returncode, changed.stderr,
                          contains="was trained with --lr 0.0002 --seed 0 (checkpoint step-000000004.pt), this "
                                   "command gives --lr 0.01 --seed 3: resume with --lr 0.0002 --seed 0")
    assert (run / "config.json").read_text() == config


def test_a_larger_budget_extends_the_run_and_a_smaller_one_trains_nothing(spec_file, tmp_path: Path) -> None:
    """Warm-up then a constant learning rate: a larger --images goes on as one run without
    --allow-config-change (said and logged); a budget below the trained step says there is nothing
    to train and leaves the folder as it was."""
    spec, run = spec_file(), tmp_path / "run"
    assert run_memekit("train", spec, "--out", run, "--images", "32", *TRAIN).returncode == 0
    longer = run_memekit("train", spec, "--out", run, "--images", "48", *TRAIN)
    assert longer.returncode == 0, longer.stderr
    assert "extending the budget from 4 to 6 steps (32 -> 48 images)" in longer.stderr
    assert "changed settings" not in longer.stderr
    assert "trained to step 6: 48 images in total, 24 per expert; 16 in this run at" in longer.stdout
    events = read_log(run)
    assert {"event": "budget_changed", "step": 4, "images": [32, 48], "steps": [4, 6]} in events
    assert json.loads((run / "config.json").read_text())["images"] == 48

    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "log.jsonl"}
    shorter = run_memekit("train", spec, "--out", run, "--images", "16", *TRAIN)
    assert shorter.returncode == 0, shorter.stderr
    assert (f"{run} was trained to step 6 (48 images), beyond this budget of 2 steps (16 images): nothing to "
            "train") in shorter.stderr
    assert f"{run} was trained to step 6 before" in shorter.stdout and "nothing left to train" in shorter.stdout
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "log.jsonl"} == before


@pytest.mark.parametrize("env, tty, expected", [("", True, True), ("1", True, False), ("", False, False),
                                                ("0", True, True)])
def test_bars_only_on_a_terminal_and_without_tqdm_disable(monkeypatch: pytest.MonkeyPatch, env: str, tty: bool,
                                                          expected: bool) -> None:
    monkeypatch.setenv("TQDM_DISABLE", env)
    monkeypatch.setattr(sys, "stderr", type("Stream", (), {"isatty": lambda self: tty, "write": print})())
    assert progress_enabled(True) is expected
    assert progress_enabled(False) is False
