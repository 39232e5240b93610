"""Checkpoints: what a run writes, keep-last-N, and one-line refusals of every bad file."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import DATA, assert_one_line_error, assert_same, run_memekit, tiny_spec

from memekit.search.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    checkpoint_spec,
    list_checkpoints,
    load_checkpoint,
)
from memekit.search.sampling import load_model


def test_run_keeps_the_last_n_checkpoints_and_no_temp_files(trained_run: Path) -> None:
    """4 steps, a checkpoint every step, keep_last 2: steps 3 and 4 remain, nothing else."""
    folder = trained_run / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000000003.pt", "step-000000004.pt"]
    assert list_checkpoints(trained_run) == [folder / "step-000000003.pt", folder / "step-000000004.pt"]
    assert not [p for p in trained_run.rglob("*") if ".tmp" in p.name]


def test_checkpoint_carries_spec_config_and_counters(trained_run: Path) -> None:
    state = load_checkpoint(trained_run)  # a run folder means its latest checkpoint
    assert state["path"] == str(trained_run / "checkpoints" / "step-000000004.pt")
    assert state["format"] == CHECKPOINT_FORMAT and state["version"] == 1
    assert checkpoint_spec(state) == tiny_spec()
    assert json.loads((trained_run / "spec.json").read_text()) == tiny_spec().to_dict()
    assert json.loads(state["config"])["batch"] == 8
    assert state["step"] == 4 and state["images_seen"] == 4 * 8 and state["ema_updates"] == 4
    assert state["images_per_expert"] == [16, 16]
    # only plain data: it loaded with weights_only=True, and the EMA weights rebuild the model
    model, spec, _ = load_model(trained_run)
    assert spec == tiny_spec()
    assert_same(model.state_dict(), state["ema"], "ema")
    raw, _, _ = load_model(trained_run, use_ema=False)
    assert_same(raw.state_dict(), state["model"], "model")


# ---- bad files ----------------------------------------------------------------------------------
class _RunsCode:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _good_state(trained_run: Path) -> dict:
    return torch.load(trained_run / "checkpoints" / "step-000000004.pt", weights_only=True)


def _no_spec(path: Path, run: Path) -> None:
    state = _good_state(run)
    del state["spec"]
    torch.save(state, path)


def _truncated(path: Path, run: Path) -> None:
    raw = (run / "checkpoints" / "step-000000004.pt").read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _random_bytes(path: Path, run: Path) -> None:
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())


def _empty(path: Path, run: Path) -> None:
    path.write_bytes(b"")


def _foreign_dict(path: Path, run: Path) -> None:
    torch.save({"state_dict": {"weight": torch.zeros(3)}, "epoch": 7}, path)


def _bare_tensor(path: Path, run: Path) -> None:
    torch.save(torch.zeros(3), path)


def _future_version(path: Path, run: Path) -> None:
    state = _good_state(run)
    state["version"] = 99
    torch.save(state, path)


def _missing(path: Path, run: Path) -> None:
    pass


BAD_FILES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "no-spec": (_no_spec, "has no spec"),
    "truncated": (_truncated, "is corrupted or not a memekit checkpoint"),
    "random-bytes": (_random_bytes, "is corrupted or not a memekit checkpoint"),
    "empty": (_empty, "is corrupted or not a memekit checkpoint"),
    "foreign-torch-dict": (_foreign_dict, "is not a memekit checkpoint"),
    "bare-tensor": (_bare_tensor, "is not a memekit checkpoint"),
    "future-version": (_future_version, "has version 99"),
    "missing": (_missing, "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_checkpoint_is_refused_in_one_line(case: str, trained_run: Path, tmp_path: Path,
                                               cli: Callable[..., tuple[int, str, str]]) -> None:
    make, phrase = BAD_FILES[case]
    path = tmp_path / "bad.pt"
    make(path, trained_run)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and phrase in message and str(path) in message, message
    with pytest.raises(CheckpointError):
        load_model(path)
    code, _, err = cli("sample", path, "--out", tmp_path / "out", "--n", "1", "--steps", "1", "--quiet")
    assert_one_line_error(code, err, contains=phrase)
    assert not (tmp_path / "out").exists()


def test_run_folder_without_checkpoints_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        load_checkpoint(tmp_path)


def test_pickled_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="is corrupted or not a memekit checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_sample_subprocess_refuses_truncated_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    """The real entry point: exit code 2 and one line on stderr, no traceback."""
    _truncated(tmp_path / "bad.pt", trained_run)
    proc = run_memekit("sample", tmp_path / "bad.pt", "--out", tmp_path / "out", "--n", "1", "--quiet")
    assert_one_line_error(proc.returncode, proc.stderr, contains="is corrupted or not a memekit checkpoint")
    assert proc.stdout == ""


def _weights_of_another_spec(path: Path, run: Path) -> None:
    """A complete, well-formed checkpoint whose tensors do not fit its spec (e.g. written by an
    older memekit whose expert layout changed, or a hand-edited spec)."""
    state = _good_state(run)
    spec = json.loads(state["spec"])
    for expert in spec["experts"]:
        expert["base_width"] = 16
    state["spec"] = json.dumps(spec)
    torch.save(state, path)


def test_weights_that_do_not_fit_the_spec_are_refused_in_one_line(
        trained_run: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    """Sampling from such a checkpoint, and resuming training from it, are one-line errors."""
    path = tmp_path / "mismatch.pt"
    _weights_of_another_spec(path, trained_run)
    with pytest.raises(CheckpointError) as caught:
        load_model(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    code, _, err = cli("sample", path, "--out", tmp_path / "out", "--n", "1", "--steps", "1", "--quiet")
    assert_one_line_error(code, err, contains="does not fit")

    # the same spec, but one tensor of the model is missing: resuming is refused in one line
    run_dir = tmp_path / "run"
    state = _good_state(trained_run)
    del state["model"][next(iter(state["model"]))]
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(state, run_dir / "checkpoints" / "step-000000004.pt")
    spec = tmp_path / "spec.json"
    spec.write_text(tiny_spec().to_json())
    code, _, err = cli("train", spec, "--data", DATA, "--out", run_dir, "--batch", "8", "--steps", "6",
                       "--device", "cpu", "--quiet")
    assert_one_line_error(code, err, contains="does not fit")
    assert list_checkpoints(run_dir) == [run_dir / "checkpoints" / "step-000000004.pt"]


def test_checkpoint_step_reads_the_step_from_the_file_name(tmp_path: Path) -> None:
    from memekit.search.checkpoint import CheckpointError, checkpoint_path, checkpoint_step

    assert checkpoint_step(checkpoint_path(tmp_path, 4687)) == 4687
    assert checkpoint_step("runs/x/checkpoints/step-000000012.pt") == 12
    with pytest.raises(CheckpointError, match="step-XXXXXXXXX.pt"):
        checkpoint_step(tmp_path / "model.pt")
