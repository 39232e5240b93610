"""``memekit search --dry-run`` checks what the real run checks before its first trial (data readable
and non-empty, device and precision, storage reachable, the study folder's state), says it in a
few lines (``--json``: the resolved configuration, as before), and writes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import torch
from conftest import assert_one_line_error

from memekit.search.heartbeat import pause_trial
from memekit.search.storage import open_storage
from memekit.search.study import SearchConfig, open_study, prepare_study

TINY = ("--space", "tiny", "--data", "builtin:shapes:128", "--trials", "2", "--proxy-images", "32",
        "--proxy-batch", "16", "--val-images", "16", "--warm-start", "", "--device", "cpu")


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def files_in(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_dry_run_of_a_new_study_checks_and_summarises_and_writes_nothing(tmp_path: Path, cli) -> None:
    study_dir = tmp_path / "study"
    code, out, err = cli("search", study_dir, *TINY, "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"study 'memekit' in {study_dir}: a new study"
    assert f"storage: {study_dir}/study.journal (reached)" in lines
    data = next(line for line in lines if line.startswith("data: builtin:shapes:128: "))
    counts = re.search(r": 128 images \((\d+) train, (\d+) reference\) readable at 16 px", data)
    assert counts and int(counts[1]) + int(counts[2]) == 128 and int(counts[2]) > 0, data
    assert "device: cpu, mixed precision no, 1 worker(s)" in lines
    assert len(lines) < 12 and not out.lstrip().startswith("{")  # a summary, not the JSON
    assert lines[-1].startswith("dry run: everything checked, nothing written")
    assert not study_dir.exists()

    code, out, err = cli("search", study_dir, *TINY, "--dry-run", "--json")  # today's JSON, for scripts
    assert code == 0, err
    plan = json.loads(out)
    assert {"config", "resumed", "space", "proxy"} <= set(plan) and plan["resumed"] is False
    assert plan["state"] == "new" and plan["config"]["n_trials"] == 2 and plan["proxy"]["images"] == 32
    assert not study_dir.exists()


@pytest.mark.parametrize("make_data", ["missing", "empty-folder", "no-images"])
@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["summary", "json"])
def test_dry_run_with_missing_data_fails_in_one_line_and_writes_nothing(tmp_path: Path, cli, make_data: str,
                                                                       json_flag: tuple[str, ...]) -> None:
    data = tmp_path / "faces"
    if make_data != "missing":
        data.mkdir()
    if make_data == "no-images":
        (data / "notes.txt").write_text("not an image")
    args = list(TINY)
    args[args.index("builtin:shapes:128")] = str(data)
    code, out, err = cli("search", tmp_path / "study", *args, "--dry-run", *json_flag)
    assert_one_line_error(code, err, contains=str(data))
    assert out == ""
    assert not (tmp_path / "study").exists()


UNAVAILABLE = [
    pytest.param(("--device", "cuda:99"), "cuda:99", id="device"),  # no machine has it
    pytest.param(("--gpus", "99"), "--gpus 99", id="gpus"),
    pytest.param(("--mixed-precision", "bf16"), "--mixed-precision bf16 needs a CUDA device", id="bf16-on-cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
]


@pytest.mark.parametrize("option, message", UNAVAILABLE)
def test_dry_run_with_an_unavailable_device_fails_in_one_line_and_writes_nothing(tmp_path: Path, cli,
                                                                                 option: tuple[str, str],
                                                                                 message: str) -> None:
    args = [a for a in TINY if a not in ("--device", "cpu")] if option[0] == "--device" else list(TINY)
    if option[0] == "--mixed-precision":  # the default device: the CPU of a machine without CUDA
        args = [a for a in args if a not in ("--device", "cpu")]
    code, out, err = cli("search", tmp_path / "study", *args, *option, "--dry-run")
    assert_one_line_error(code, err, contains=message)
    assert out == "" and not (tmp_path / "study").exists()
    # the real run refuses the same way, before it announces or writes anything
    code, out, err = cli("search", tmp_path / "study", *args, *option)
    assert_one_line_error(code, err, contains=message)
    assert out == "" and not (tmp_path / "study").exists()


def test_dry_run_of_an_existing_study_says_what_is_left_and_refuses_other_settings(tmp_path: Path, cli) -> None:
    study_dir = tmp_path / "study"
    config = SearchConfig(study_dir=str(study_dir), space="tiny", data="builtin:shapes:128", n_trials=3,
                          proxy_images=32, proxy_batch=16, val_images=16, warm_start=(), device="cpu")
    study = prepare_study(config)
    trial = study.ask()  # a trial a stop paused at its checkpoint
    storage = open_storage(None, study_dir)
    pause_trial(storage, storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("memekit"), trial.number), "stopped at step 7")
    before = files_in(study_dir)

    code, out, err = cli("search", study_dir, "--dry-run")
    assert code == 0, err
    assert out.splitlines()[0] == (f"study 'memekit' in {study_dir}: resuming: 0/3 trials finished, trial 0 paused "
                                   "(stopped at step 7; it resumes from its checkpoint), 2 more to run")
    code, out, err = cli("search", study_dir, "--proxy-images", "64", "--dry-run")  # another study's settings
    assert_one_line_error(code, err, contains="different proxy_images (32, this command gives 64)")
    code, out, err = cli("search", study_dir, "--trials", "5", "--dry-run")  # a change needs --update
    assert_one_line_error(code, err, contains="--update")
    code, out, err = cli("search", study_dir, "--trials", "5", "--update", "--dry-run")
    assert code == 0, err
    assert "changes: n_trials 3 -> 5" in out.splitlines()
    assert files_in(study_dir) == before  # the dry runs wrote nothing
    assert open_study(config, seed=0, create=False).user_attrs["memekit_config"]["n_trials"] == 3


def test_json_without_dry_run_is_refused(tmp_path: Path, cli) -> None:
    code, out, err = cli("search", tmp_path / "study", *TINY, "--json")
    assert_one_line_error(code, err, contains="--json prints the dry run's configuration")
    assert not (tmp_path / "study").exists()
