"""Sampling (API and ``memekit sample``) and the ``memekit train`` command line: dry run, bad
input, SIGTERM and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    DATA,
    RESOLUTION,
    assert_one_line_error,
    read_log,
    subprocess_env,
    tiny_spec,
)
from PIL import Image

from memekit.search.checkpoint import checkpoint_spec, list_checkpoints, load_checkpoint
from memekit.search.sampling import load_model, sample_images

Cli = Callable[..., tuple[int, str, str]]


# ---- sampling -----------------------------------------------------------------------------------
def test_sample_images_count_shape_dtype_and_seed(trained_run: Path) -> None:
    model, spec, _ = load_model(trained_run)
    images = sample_images(model, spec, 5, steps=3, seed=7, batch=2, progress=False)
    assert images.shape == (5, RESOLUTION, RESOLUTION, 3) and images.dtype == np.uint8
    again = sample_images(model, spec, 5, steps=3, seed=7, batch=2, progress=False)
    assert np.array_equal(images, again)
    other = sample_images(model, spec, 5, steps=3, seed=8, batch=2, progress=False)
    assert not np.array_equal(images, other)
    # batch k is seeded seed + k: the first batch of seed 8 is the second batch of seed 7
    assert np.array_equal(images[2:4], other[0:2])


def test_sample_command_writes_npz_and_png_folder(trained_run: Path, tmp_path: Path, cli: Cli) -> None:
    """--n 5 --batch 2: five uint8 images; same seed -> the same images in both formats, and the
    same as the Python API."""
    common = ("--n", "5", "--batch", "2", "--steps", "3", "--seed", "3", "--quiet")
    code, out, err = cli("sample", trained_run, "--out", tmp_path / "a.npz", *common)
    assert code == 0, err
    assert "5 images" in out
    with np.load(tmp_path / "a.npz") as data:
        npz = data["images"]
    assert npz.shape == (5, RESOLUTION, RESOLUTION, 3) and npz.dtype == np.uint8

    code, _, err = cli("sample", trained_run, "--out", tmp_path / "pngs", *common)
    assert code == 0, err
    files = sorted((tmp_path / "pngs").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    pngs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    assert np.array_equal(pngs, npz)  # PNG is lossless

    model, spec, _ = load_model(trained_run)
    assert np.array_equal(npz, sample_images(model, spec, 5, steps=3, seed=3, batch=2, progress=False))


def test_sample_refuses_to_overwrite_without_flag(trained_run: Path, tmp_path: Path, cli: Cli) -> None:
    common = ("--n", "1", "--steps", "1", "--quiet")
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, _, err = cli("sample", trained_run, "--out", folder, *common)
    assert_one_line_error(code, err, contains="--overwrite")
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    code, _, err = cli("sample", trained_run, "--out", folder, "--overwrite", *common)
    assert code == 0, err
    assert (folder / "000000.png").is_file()

    npz = tmp_path / "a.npz"
    npz.write_bytes(b"not mine")
    code, _, err = cli("sample", trained_run, "--out", npz, *common)
    assert_one_line_error(code, err, contains="--overwrite")
    assert npz.read_bytes() == b"not mine"


def test_sample_refuses_an_existing_file_as_out(trained_run: Path, tmp_path: Path, cli: Cli) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, _, err = cli("sample", trained_run, "--out", target, "--n", "1", "--steps", "1", "--quiet")
    assert_one_line_error(code, err)
    assert target.read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_sample_on_missing_cuda_is_a_one_line_error(trained_run: Path, tmp_path: Path, cli: Cli) -> None:
    code, _, err = cli("sample", trained_run, "--out", tmp_path / "o", "--n", "1", "--steps", "1",
                       "--device", "cuda", "--quiet")
    assert_one_line_error(code, err, contains="cuda")


# ---- memekit train: dry run and bad input ----------------------------------------------------------
@pytest.mark.parametrize(("budget", "batch", "steps"), [(("--images", "984"), 24, 41),
                                                         (("--steps", "5"), 48, 5)])
def test_dry_run_prints_the_budget(spec_file: Callable[..., Path], cli: Cli, tmp_path: Path,
                                   budget: tuple[str, str], batch: int, steps: int) -> None:
    """images_total = steps x batch, with images a whole number of batches; each of N experts gets 1/N."""
    spec = spec_file(boundaries=(0, 10, 30, 50), soft_assignment=(0.9, 0.5, 0.2))
    code, out, err = cli("train", spec, "--data", DATA, "--batch", str(batch), *budget, "--dry-run", "--json",
                         "--out", tmp_path / "run")
    assert code == 0, err
    report = json.loads(out)
    assert report["steps"] == steps and report["images_total"] == steps * batch
    assert report["images_per_expert"] * 3 == report["images_total"]
    assert report["config"]["batch"] == batch and len(report["experts"]) == 3
    assert report["spec"] == json.loads(spec.read_text())
    assert not (tmp_path / "run").exists()


def _train_args(spec: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(spec), "--data", DATA, "--out", str(out), "--device", "cpu", "--quiet",
            "--val-images", "4", "--sample-steps", "1", *extra]


@pytest.mark.parametrize(("extra", "phrase"), [
    (("--batch", "7", "--steps", "2"), "divisible"),
    (("--batch", "8", "--images", "64", "--steps", "2"), "not both"),
    (("--batch", "8", "--steps", "2", "--data", "/no/such/images"), "does not exist"),
    (("--batch", "8", "--steps", "2", "--lr", "-1"), "lr"),
    (("--batch", "16", "--images", "8"), "smaller than one batch"),
    (("--batch", "8", "--steps", "2", "--weight-decay", "-0.1"), "weight_decay"),
    (("--batch", "8", "--steps", "2", "--grad-clip", "nan"), "grad_clip"),
    (("--batch", "8", "--steps", "2", "--max-minutes", "0"), "--max-minutes"),
], ids=["batch-not-divisible", "images-and-steps", "missing-data", "negative-lr", "budget-below-batch",
        "negative-weight-decay", "nan-grad-clip", "zero-minutes"])
def test_bad_train_input_is_one_line_exit_2(spec_file: Callable[..., Path], cli: Cli, tmp_path: Path,
                                            extra: tuple[str, ...], phrase: str) -> None:
    code, _, err = cli(*_train_args(spec_file(), tmp_path / "run", *extra))
    assert_one_line_error(code, err, contains=phrase)
    assert list_checkpoints(tmp_path / "run") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is allowed where CUDA exists")
def test_bf16_on_cpu_is_one_line_exit_2(spec_file: Callable[..., Path], cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli(*_train_args(spec_file(), tmp_path / "run", "--batch", "8", "--steps", "2",
                                    "--mixed-precision", "bf16"))
    assert_one_line_error(code, err, contains="bf16")


def test_dry_run_refuses_batch_not_divisible_by_experts(spec_file: Callable[..., Path], cli: Cli) -> None:
    code, _, err = cli("train", spec_file(), "--data", DATA, "--batch", "7", "--steps", "3", "--dry-run")
    assert_one_line_error(code, err, contains="divisible")


# ---- SIGTERM -----------------------------------------------------------------------------------------
def _wait_for_train_step(run_dir: Path, proc: subprocess.Popen, after: int, timeout: float = 90) -> int:
    """Poll log.jsonl until a train record with step > ``after`` appears; return that step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"train exited early ({proc.returncode}): {proc.stderr.read()}"
        try:
            steps = [r["step"] for r in read_log(run_dir) if r.get("event") == "train"]
        except json.JSONDecodeError:  # a line being written
            steps = []
        if steps and max(steps) > after:
            return max(steps)
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no train step > {after} logged within {timeout} s")


def _terminate(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def test_sigterm_writes_a_checkpoint_and_the_same_command_resumes(spec_file: Callable[..., Path],
                                                                   tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "memekit.search.cli",
               *_train_args(spec_file(), run_dir, "--batch", "8", "--images", "80000000", "--log-every", "1",
                            "--checkpoint-every", "0", "--val-every", "0", "--sample-every", "0")]

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())
    _wait_for_train_step(run_dir, proc, after=0)
    code, err = _terminate(proc)
    line = assert_one_line_error(code, err, expected_code=128 + signal.SIGTERM, contains="SIGTERM at step")
    state = load_checkpoint(run_dir)
    first = state["step"]
    assert first > 0 and state["ema_updates"] == first and state["images_seen"] == 8 * first
    assert state["path"] in line
    assert checkpoint_spec(state) == tiny_spec()

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())
    _wait_for_train_step(run_dir, proc, after=first)
    code, err = _terminate(proc)
    assert_one_line_error(code, err, expected_code=128 + signal.SIGTERM, contains="SIGTERM at step")
    log = read_log(run_dir)
    resumed = [r for r in log if r["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] == first
    train_steps = [r["step"] for r in log if r["event"] == "train"]
    assert train_steps == list(range(1, len(train_steps) + 1)), "the log reads like one straight run"
    second = load_checkpoint(run_dir)
    assert second["step"] > first and second["ema_updates"] == second["step"]

