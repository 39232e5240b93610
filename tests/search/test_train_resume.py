"""Training runs that lose nothing: an early checkpoint, a folder without one starts over (and says
so), its settings are kept there too, an unreadable newest checkpoint is passed over for the newest
readable one, nothing is written before the data is read, budgets are never rounded, and the EMA
weights are kept apart as safetensors. Training itself is unchanged: every resumed run here ends
bit-identical to a straight one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from conftest import (
    DATA,
    assert_one_line_error,
    assert_same,
    read_log,
    subprocess_env,
    tiny_config,
    tiny_spec,
    tiny_trainer,
)

from memekit.search.checkpoint import (
    CheckpointError,
    checkpoint_path,
    ema_weights_path,
    list_checkpoints,
    load_checkpoint,
    load_ema_weights,
)
from memekit.search.train import Trainer, train
from memekit.search.train_config import TrainConfig
from memekit.space import MultiExpert

Cli = Callable[..., tuple[int, str, str]]
FIELDS: dict[str, Any] = dict(batch=8, warmup_images=8 * 3, ema_decay=0.99, val_images=8, val_timesteps=2)
CLI_TRAIN = ("--data", DATA, "--device", "cpu", "--quiet", "--val-images", "8", "--sample-every", "0",
             "--sample-steps", "1", "--checkpoint-every", "0", "--checkpoint-minutes", "0")


class Killed(BaseException):
    """Stands for SIGKILL: the process ends at once, no handler runs, no checkpoint is written."""


def _killed_after(run_dir: Path, steps: int, **fields: Any) -> None:
    """A run with checkpoints only at its end, killed after ``steps`` steps."""
    trainer = tiny_trainer(run_dir, tiny_spec(dropout=0.1), images=8 * 100, checkpoint_every=0,
                           checkpoint_minutes=0, **{**FIELDS, **fields})
    original = trainer.train_step

    def step_then_die() -> torch.Tensor:
        if trainer.step == steps:
            raise Killed
        return original()

    trainer.train_step = step_then_die
    with pytest.raises(Killed):
        trainer.run()
    assert list_checkpoints(run_dir) == [] and [r["step"] for r in read_log(run_dir) if r["event"] == "train"]


def _straight(run_dir: Path, steps: int, **fields: Any) -> dict[str, Any]:
    tiny_trainer(run_dir, tiny_spec(dropout=0.1), images=8 * steps, **{**FIELDS, **fields}).run()
    return load_checkpoint(run_dir)


def _same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("model", "ema", "optimizer"):
        assert_same(a[key], b[key], key)
    assert a["step"] == b["step"] and a["ema_updates"] == b["ema_updates"]


# ---- a folder without a checkpoint --------------------------------------------------------------
def test_a_run_killed_before_its_first_checkpoint_starts_over_and_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _killed_after(run, 3)
    said: list[str] = []
    result = train(tiny_spec(dropout=0.1), tiny_config(images=8 * 5, **FIELDS), run, progress=False, say=said.append)
    assert (f"starting over in {run}: it holds no checkpoint (the last run stopped before its first one), so "
            "training begins at step 0") in said
    assert result.resumed_from is None and result.steps == 5
    log = read_log(run)
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4, 5]  # the killed run's steps are gone
    assert [r for r in log if r["event"] == "started_over"] == [{"event": "started_over", "step": 0}]
    _same_training_state(load_checkpoint(run), _straight(tmp_path / "straight", 5))


def test_a_new_folder_is_not_announced_as_starting_over(tmp_path: Path) -> None:
    said: list[str] = []
    train(tiny_spec(), tiny_config(images=8 * 2, **FIELDS), tmp_path / "new", progress=False, say=said.append)
    assert not [line for line in said if "starting over" in line]


def test_a_changed_batch_without_a_checkpoint_is_refused(tmp_path: Path, spec_file, cli: Cli) -> None:
    """The killed run's config.json keeps its settings: another --batch is refused in one line that
    names it (config.json once was silently rewritten), and accepted, logged, with the flag."""
    run = tmp_path / "run"
    spec = spec_file(dropout=0.1)
    _killed_after(run, 2, lr=2e-4)  # the CLI's default learning rate
    config = (run / "config.json").read_text()
    code, _, err = cli("train", spec, "--out", run, "--steps", "3", "--batch", "16", "--warmup-images", "24",
                       "--ema-decay", "0.99", *CLI_TRAIN)
    assert_one_line_error(code, err, contains=(
        f"{run} holds a run started with --batch 8 that stopped before its first checkpoint, this command gives "
        "--batch 16: rerun with --batch 8, or pass --allow-config-change to start over with the new settings"))
    assert (run / "config.json").read_text() == config

    code, _, err = cli("train", spec, "--out", run, "--steps", "3", "--batch", "16", "--warmup-images", "24",
                       "--ema-decay", "0.99", "--allow-config-change", *CLI_TRAIN)
    assert code == 0, err
    assert "starting over in" in err and "changed settings: batch 8 -> 16" in err
    assert json.loads((run / "config.json").read_text())["batch"] == 16
    assert {"event": "config_changed", "step": 0, "changes": {"batch": [8, 16]}} in read_log(run)


# ---- an early checkpoint, and one at the end of every chunk ---------------------------------------
def test_a_checkpoint_once_checkpoint_minutes_passed(tmp_path: Path) -> None:
    """A clock at 25 s per step and checkpoint_minutes 1: the first step with 25 k >= 60 is k = 3, the
    next with 25 (k - 3) >= 60 is k = 6, then the end (8); with checkpoint_minutes 0, the end only."""
    for minutes, expected in ((1.0, [3, 6, 8]), (0.0, [8])):
        run = tmp_path / f"run-{minutes}"
        trainer = tiny_trainer(run, images=8 * 8, checkpoint_every=0, checkpoint_minutes=minutes, keep_last=10)
        trainer.clock = lambda t=trainer: 25.0 * t.step
        trainer.run()
        assert list_checkpoints(run) == [checkpoint_path(run, s) for s in expected]
    assert 0 < TrainConfig().checkpoint_minutes <= 10  # by default, a long run has one within its first minutes


def test_a_max_minutes_chunk_ends_with_a_checkpoint(tmp_path: Path, spec_file, cli: Cli) -> None:
    """No step or time checkpoints: the chunk's only checkpoint is the one its time limit writes, at
    the last step it trained, with its EMA weights; the same command then goes on from it."""
    run = tmp_path / "run"
    args = ("train", spec_file(), "--out", run, "--batch", "8", "--images", "800000", "--log-every", "1", *CLI_TRAIN)
    code, _, err = cli(*args, "--max-minutes", "0.02")
    assert code == 0, err
    assert "paused after --max-minutes 0.02" in err
    trained = [r["step"] for r in read_log(run) if r["event"] == "train"]
    step = max(trained, default=0)
    assert list_checkpoints(run) == [checkpoint_path(run, step)]
    assert ema_weights_path(run, step).is_file()
    code, _, err = cli(*args, "--max-minutes", "0.01")
    assert code == 0, err
    assert f"resuming {run} from step {step:,}" in err


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available")
def test_two_processes_agree_on_time_checkpoints(spec_file, tmp_path: Path) -> None:
    """Under torchrun the ranks decide the time rule together every STOP_SYNC_STEPS = 10 steps (a rank
    that wrote alone would leave the other waiting in a barrier): with checkpoint_minutes ~0, steps
    10 and 20, then the end (25)."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "memekit.search.cli", "train", str(spec_file()), "--out", str(run), "--batch", "8", "--steps",
               "25", "--keep-last", "5", *CLI_TRAIN[:-1], "1e-9"]
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert list_checkpoints(run) == [checkpoint_path(run, s) for s in (10, 20, 25)]


# ---- an unreadable newest checkpoint -----------------------------------------------------------------
def test_a_truncated_newest_checkpoint_falls_back_to_the_newest_readable_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    tiny_trainer(run, tiny_spec(dropout=0.1), images=8 * 4, checkpoint_every=2, keep_last=5, **FIELDS).run()
    newest = checkpoint_path(run, 4)
    raw = newest.read_bytes()
    newest.write_bytes(raw[: len(raw) // 2])

    said: list[str] = []
    trainer = Trainer(tiny_spec(dropout=0.1), tiny_config(images=8 * 6, keep_last=1, **FIELDS), run, progress=False,
                      say=said.append)
    trainer.run()
    assert said[0] == ("checkpoint step-000000004.pt cannot be read (the file is empty, truncated, damaged or not a "
                       "PyTorch file (as when a write or a copy was cut off)): passed over, and set aside as "
                       "step-000000004.pt.unreadable")
    assert said[1].startswith(f"resuming {run} from step 2 (checkpoint {checkpoint_path(run, 2)}, the newest "
                              "readable one)")
    assert trainer.resumed_from == 2
    # keep_last 1 kept the final checkpoint, not the set-aside file; the run equals a straight one
    assert list_checkpoints(run) == [checkpoint_path(run, 6)]
    assert (run / "checkpoints" / "step-000000004.pt.unreadable").read_bytes() == raw[: len(raw) // 2]
    assert [r["step"] for r in read_log(run) if r["event"] == "train"] == [1, 2, 3, 4, 5, 6]
    _same_training_state(load_checkpoint(run), _straight(tmp_path / "straight", 6))


def test_a_folder_of_only_unreadable_checkpoints_is_refused_in_whole_sentences(tmp_path: Path, spec_file,
                                                                                cli: Cli) -> None:
    run = tmp_path / "run"
    tiny_trainer(run, images=8 * 2, **FIELDS).run()
    checkpoint = checkpoint_path(run, 2)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    code, _, err = cli("train", spec_file(), "--out", run, "--steps", "3", "--batch", "8", *CLI_TRAIN)
    line = assert_one_line_error(code, err, contains=(
        f"none of the 1 checkpoint(s) in {run} can be read (newest step-000000002.pt: the file is empty, truncated, "
        "damaged or not a PyTorch file (as when a write or a copy was cut off)): move them away to start over, or "
        "use a new --out folder"))
    assert "miniz" not in line and line.endswith("use a new --out folder")
    code, _, err = cli("sample", checkpoint, "--out", tmp_path / "s", "--n", "1", "--steps", "1", "--quiet")
    line = assert_one_line_error(code, err, contains="is corrupted or not a memekit checkpoint: the file is empty")
    assert "miniz" not in line and line.endswith("or delete this one to use an older one")


# ---- nothing written before the data is read ---------------------------------------------------------
def test_unreadable_images_write_nothing(tmp_path: Path, spec_file, cli: Cli) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"face-{i}.png").write_bytes(bytes(range(200)))  # named like images, not images
    run = tmp_path / "run"
    code, _, err = cli("train", spec_file(), "--out", run, "--steps", "2", "--batch", "8", "--data", images,
                       "--device", "cpu", "--quiet")
    assert_one_line_error(code, err, contains=f"none of the 3 image files under '{images}' could be read")
    assert not run.exists()


# ---- budgets are never rounded --------------------------------------------------------------------------
def test_a_budget_that_is_no_whole_number_of_batches_is_refused(tmp_path: Path, spec_file, cli: Cli) -> None:
    """100 images at batch 8 are 12.5 steps: the fixes are 96 or 104 images, or 13 steps."""
    code, _, err = cli("train", spec_file(), "--out", tmp_path / "run", "--images", "100", "--batch", "8",
                       *CLI_TRAIN)
    assert_one_line_error(code, err, contains=(
        "--images 100 is not a whole number of batches of --batch 8 (12.50 steps): give --images 96 or 104, or the "
        "budget as --steps 13"))
    assert not (tmp_path / "run").exists()


def test_the_default_budget_is_rounded_up_to_whole_batches_and_said(tmp_path: Path, spec_file, cli: Cli) -> None:
    """No --images or --steps: 100,000 images, at batch 64 ceil(100000 / 64) = 1563 steps = 100,032
    images (not 1562 steps = 99,968)."""
    code, out, err = cli("train", spec_file(), "--data", DATA, "--batch", "64", "--dry-run", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["config"]["images"] == 100_032 and report["steps"] == 1563
    code, out, err = cli("train", spec_file(), "--data", DATA, "--batch", "64", "--steps", "1562", "--dry-run",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["images"] == 99_968
    code, _, err = cli("train", spec_file(), "--out", tmp_path / "run", "--batch", "64", *CLI_TRAIN,
                       "--max-minutes", "1e-6")  # the budget line, then a pause at once
    assert code == 0, err
    assert "budget: 100,032 images in total (the default 100,000 rounded up to whole batches) = 50,016 per " \
           "expert x 2 expert(s); 1,563 steps of batch 64" in err


# ---- EMA weights as safetensors -----------------------------------------------------------------------
def test_each_checkpoint_has_its_ema_weights_as_safetensors(trained_run: Path) -> None:
    """4 steps, a checkpoint every step, keep_last 2: the EMA weights of steps 3 and 4, equal to the
    checkpoints' EMA, with the spec in their metadata; they build the model on their own."""
    pytest.importorskip("safetensors")
    weights = trained_run / "weights"
    assert sorted(p.name for p in weights.iterdir()) == ["step-000000003.ema.safetensors",
                                                         "step-000000004.ema.safetensors"]
    for step in (3, 4):
        tensors, spec, metadata = load_ema_weights(ema_weights_path(trained_run, step))
        state = load_checkpoint(checkpoint_path(trained_run, step))
        assert_same(tensors, dict(state["ema"]), "ema")
        assert spec == tiny_spec() and metadata["step"] == str(step) and metadata["ema_updates"] == str(step)
        assert json.loads(metadata["config"])["batch"] == 8
        model = MultiExpert(spec)
        model.load_state_dict(tensors)  # strict: every tensor of the network, no other
    assert not [p for p in trained_run.rglob("*") if ".tmp" in p.name]


def test_a_foreign_file_is_not_taken_for_ema_weights(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "other.safetensors"
    safetensors.save_file({"w": torch.zeros(2)}, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="is not a memekit EMA weights file"):
        load_ema_weights(path)
