"""Two CPU processes (gloo) under ``torchrun``: one run, one final checkpoint, written by rank 0."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import DATA, read_log, subprocess_env, tiny_spec

from memekit.search.checkpoint import checkpoint_spec, load_checkpoint
from memekit.search.sampling import load_model

WORLD, BATCH, STEPS = 2, 8, 4
TIMEOUT_S = 300  # generous: two processes on a shared CPU, each importing torch


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available")
def test_two_process_gloo_run_writes_one_checkpoint(spec_file: Callable[..., Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
               "-m", "memekit.search.cli", "train", str(spec_file()), "--data", DATA, "--out", str(run_dir),
               "--device", "cpu", "--quiet", "--batch", str(BATCH), "--steps", str(STEPS), "--log-every", "1",
               "--checkpoint-every", "0", "--val-images", "4", "--sample-steps", "1"]
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # exactly one checkpoint file, the final one, and no temp files of a second writer
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"step-{STEPS:09d}.pt"]
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    # only rank 0 prints the summary, and it names the checkpoint (the ranks share stdout, so
    # count substrings, not lines)
    assert proc.stdout.count("trained to step") == 1
    assert "checkpoint None" not in proc.stdout
    assert proc.stderr.count("budget:") == 1

    state = load_checkpoint(run_dir)
    assert checkpoint_spec(state) == tiny_spec()
    assert state["step"] == STEPS and state["ema_updates"] == STEPS
    # the budget is global: batch images per step over all processes, batch / N per expert
    assert state["images_seen"] == STEPS * BATCH
    assert state["images_per_expert"] == [STEPS * BATCH // 2] * 2
    model, _, _ = load_model(run_dir)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())

    # only rank 0 logs: every step once, one validation at the end
    log = read_log(run_dir)
    assert [r["step"] for r in log if r["event"] == "train"] == list(range(1, STEPS + 1))
    assert [r["step"] for r in log if r["event"] == "validation"] == [STEPS]


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with the gloo backend is not available")
def test_two_processes_pause_together_at_the_time_limit(spec_file: Callable[..., Path], tmp_path: Path) -> None:
    """``--max-minutes`` under torchrun: the ranks agree on the stop step (a rank that stopped alone
    would leave the other waiting in a collective), write one checkpoint, exit 0; the same command
    without the limit then finishes the run."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
               "-m", "memekit.search.cli", "train", str(spec_file()), "--data", DATA, "--out", str(run_dir),
               "--device", "cpu", "--quiet", "--batch", str(BATCH), "--steps", str(STEPS), "--val-images", "4",
               "--sample-steps", "1"]
    env = {**subprocess_env(), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    paused = subprocess.run([*command, "--max-minutes", "1e-6"], capture_output=True, text=True, timeout=TIMEOUT_S,
                            env=env, cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr[-4000:]
    assert paused.stderr.count("paused after --max-minutes") == 1  # rank 0 reports it
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"step-{0:09d}.pt"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-4000:]
    assert load_checkpoint(run_dir)["step"] == STEPS
