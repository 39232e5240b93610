"""``memekit train --dry-run`` checks what the run would check before its first step (data, device,
precision, the run folder's state), prints a short summary (``--json``: the full plan), writes
nothing; and the settings wired into training (``--background``, the thread choice)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import DATA, assert_one_line_error, tiny_config, tiny_spec

from memekit.analysis.data import DEFAULT_BACKGROUND
from memekit.search.runfolder import RunFolder
from memekit.search.train import TrainConfig, Trainer, TrainingError

Cli = Callable[..., tuple[int, str, str]]
TRAIN = ("--device", "cpu", "--quiet", "--val-images", "8", "--sample-every", "0", "--sample-steps", "1",
         "--checkpoint-every", "0", "--checkpoint-minutes", "0", "--batch", "8")


def _files(folder: Path) -> dict[str, float]:
    """Every file under ``folder`` with its modification time (what a dry run must leave alone)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def _dry(cli: Cli, spec: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli("train", spec, "--data", DATA, "--out", out, *TRAIN, "--dry-run", *extra)


# ---- failures: one line, nothing written --------------------------------------------------------------
def test_a_dry_run_with_missing_data_fails_in_one_line_and_writes_nothing(tmp_path: Path, spec_file, cli: Cli,
                                                                          memekit_cache: Path) -> None:
    cache = _files(memekit_cache)
    code, out, err = cli("train", spec_file(), "--data", tmp_path / "no-such-faces", "--out", tmp_path / "run",
                         *TRAIN, "--steps", "2", "--dry-run")
    assert_one_line_error(code, err, contains="does not exist")
    assert out == "" and not (tmp_path / "run").exists() and _files(memekit_cache) == cache


def test_a_dry_run_with_an_empty_folder_of_images_fails_in_one_line(tmp_path: Path, spec_file, cli: Cli) -> None:
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "notes.txt").write_text("no images here")
    code, _, err = cli("train", spec_file(), "--data", tmp_path / "faces", "--out", tmp_path / "run", *TRAIN,
                       "--steps", "2", "--dry-run")
    assert_one_line_error(code, err)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(("extra", "phrase"), [(("--device", "cuda"), "CUDA is not available"),
                                               (("--mixed-precision", "bf16"), "bf16 needs a CUDA device")],
                         ids=["cuda", "bf16"])
def test_a_dry_run_on_an_unavailable_device_fails_in_one_line_and_writes_nothing(
        tmp_path: Path, spec_file, cli: Cli, extra: tuple[str, ...], phrase: str) -> None:
    code, out, err = _dry(cli, spec_file(), tmp_path / "run", "--steps", "2", *extra)
    assert_one_line_error(code, err, contains=phrase)
    assert out == "" and not (tmp_path / "run").exists()


def test_a_dry_run_refuses_what_the_run_would_refuse_and_changes_nothing(tmp_path: Path, spec_file,
                                                                         cli: Cli) -> None:
    """After 2 steps: another --batch is refused naming --batch, another spec is refused, as the real run;
    the folder's files are untouched."""
    spec, run = spec_file(), tmp_path / "run"
    assert cli("train", spec, "--data", DATA, "--out", run, *TRAIN, "--steps", "2")[0] == 0
    before = _files(run)
    code, _, err = cli("train", spec, "--data", DATA, "--out", run, *TRAIN[:-1], "16", "--steps", "4", "--dry-run")
    assert_one_line_error(code, err, contains="was trained with --batch 8 (checkpoint step-000000002.pt), this "
                                              "command gives --batch 16")
    code, _, err = _dry(cli, spec_file(boundaries=(0, 10, 50)), run, "--steps", "4")
    assert_one_line_error(code, err, contains="trained with a different spec")
    assert _files(run) == before


# ---- the folder's state, said in a few lines --------------------------------------------------------------
def test_a_dry_run_says_new_resumable_or_complete(tmp_path: Path, spec_file, cli: Cli) -> None:
    spec, run = spec_file(), tmp_path / "run"
    code, out, err = _dry(cli, spec, run, "--steps", "2")
    assert code == 0, err
    assert out.splitlines()[0] == "memekit train: dry run (checked; nothing written, nothing trained)"
    assert f"run:      {run}: a new run" in out
    assert "data:     builtin:shapes:160: 143 training and 8 validation samples at 8 px" in out
    assert "device:   cpu, fp32" in out and len(out.splitlines()) <= 10
    assert not run.exists()
    assert cli("train", spec, "--data", DATA, "--out", run, *TRAIN, "--steps", "2")[0] == 0
    before = _files(run)
    code, out, err = _dry(cli, spec, run, "--steps", "5")
    assert code == 0, err
    assert f"run:      {run} resumes from step 2 of 5 (step-000000002.pt)" in out
    assert "the run would say: extending the budget from 2 to 5 steps" in out
    code, out, _ = _dry(cli, spec, run, "--steps", "2")
    assert f"{run} was trained to step 2, at or beyond this budget of 2 steps: nothing to train" in out
    assert "data:" not in out  # the run would not read it
    assert _files(run) == before


def test_a_folder_stopped_before_its_first_checkpoint_starts_over(tmp_path: Path, spec_file, cli: Cli) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.json").write_text(tiny_spec().to_json())
    (run / "config.json").write_text(json.dumps(TrainConfig(data=DATA, batch=8, images=16).to_dict()))
    code, out, err = _dry(cli, spec_file(), run, "--steps", "2")
    assert code == 0, err
    assert f"{run} holds a run stopped before its first checkpoint: it starts over at step 0" in out


def test_dry_run_json_is_the_plan_with_its_checks_and_the_threads_line_is_apart(tmp_path: Path, spec_file,
                                                                               cli: Cli) -> None:
    code, out, err = _dry(cli, spec_file(), tmp_path / "run", "--steps", "3", "--json", "--threads", "1",
                          "--ema-snapshots", "2")
    assert code == 0, err
    plan = json.loads(out)  # nothing but the JSON on stdout
    assert plan["steps"] == 3 and plan["config"]["posthoc_ema_every"] == 2
    assert plan["checks"]["run_folder"]["state"] == "new" and plan["checks"]["device"] == "cpu"
    assert plan["checks"]["data"] == {"train": 143, "validation": 8, "shape": [8, 8, 3]}
    assert plan["checks"]["posthoc_ema"]["snapshots_per_profile"] == 2  # at step 2 and at the end, 3
    assert err.splitlines()[0] == "threads: 1 per process (from --threads)"
    code, _, err = cli("train", spec_file(), "--data", DATA, "--out", tmp_path / "run", *TRAIN, "--steps", "2",
                       "--json")
    assert_one_line_error(code, err, contains="--json prints the dry run's plan: give it with --dry-run")


def test_a_real_run_says_its_thread_choice_first(tmp_path: Path, spec_file, cli: Cli) -> None:
    code, _, err = cli("train", spec_file(), "--data", DATA, "--out", tmp_path / "run", *TRAIN, "--steps", "1",
                       "--threads", "1")
    assert code == 0, err
    assert err.splitlines()[:2] == ["threads: 1 per process (from --threads)",
                                    "budget: 8 images in total = 4 per expert x 2 expert(s); 1 steps of batch 8 "
                                    "(4 per expert)"]


# ---- the background transparency is composited onto ------------------------------------------------------
def test_the_background_reaches_the_loader_and_its_report_is_said(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import memekit.search.train as train_module

    calls = []
    real = train_module.load_data

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "load_data", spy)
    said: list[str] = []
    trainer = Trainer(tiny_spec(), tiny_config(background=(0, 0, 255)), tmp_path / "run", progress=False,
                      say=said.append)
    trainer.load_data()
    assert [c["background"] for c in calls] == [(0, 0, 255)] * 2
    assert all(c["say"] == said.append for c in calls)


def test_a_changed_background_is_refused_and_an_old_config_has_the_default(tmp_path: Path, spec_file,
                                                                           cli: Cli) -> None:
    spec, run = spec_file(), tmp_path / "run"
    assert cli("train", spec, "--data", DATA, "--out", run, *TRAIN, "--steps", "1", "--background", "white")[0] == 0
    assert json.loads((run / "config.json").read_text())["background"] == [255, 255, 255]
    code, _, err = cli("train", spec, "--data", DATA, "--out", run, *TRAIN, "--steps", "2")
    assert_one_line_error(code, err, contains="was trained with --background 255,255,255 (checkpoint "
                                              "step-000000001.pt), this command gives --background 128,128,128")
    code, _, err = cli("train", spec, "--data", DATA, "--out", run, *TRAIN, "--steps", "2", "--background", "#zz")
    assert_one_line_error(code, err, contains="argument --background: background '#zz' is not a colour")
    old = tiny_config().to_dict()
    del old["background"]  # a config.json of a memekit before --background
    assert TrainConfig.from_dict(old).background == DEFAULT_BACKGROUND == (128, 128, 128)


def test_an_older_config_without_background_is_not_compared_on_it(tmp_path: Path) -> None:
    """A config.json or checkpoint of a memekit before --background has no key to compare: it resumes
    (with the default, which reproduces its data); one with the key is compared like the data source."""
    stored = {k: v for k, v in tiny_config().to_dict().items() if k != "background"}
    folder, now = RunFolder(tmp_path), tiny_config(background=(1, 2, 3)).to_dict()
    assert folder.config_changes(stored, now, False, "step-000000001.pt") == {}
    with pytest.raises(TrainingError, match="was trained with --background 128,128,128 .* gives --background 1,2,3"):
        folder.config_changes({**stored, "background": [128, 128, 128]}, now, False, "step-000000001.pt")
