"""``memekit search`` cannot hurt a study: bad input is refused before anything is written,
``memekit search STUDY_DIR`` alone resumes with the stored settings, a changed setting needs
``--update`` and is recorded, saved configs refuse keys they do not know."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from conftest import assert_one_line_error
from optuna.trial import TrialState

from memekit.search.results import load_study
from memekit.search.study import SearchConfig, SearchError, prepare_study
from memekit.search.train import TrainConfig, TrainingError

TINY = ("--space", "tiny", "--data", "builtin:shapes:128", "--proxy-images", "32", "--proxy-batch", "16",
        "--val-images", "16", "--warm-start", "", "--device", "cpu")


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def finished(study_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return [t for t in load_study(study_dir).study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.parametrize("make_data", ["missing", "empty-folder", "no-images"])
def test_mistyped_data_leaves_no_study_behind(tmp_path: Path, cli, make_data: str) -> None:
    data = tmp_path / "data"
    if make_data != "missing":
        data.mkdir()
    if make_data == "no-images":
        (data / "notes.txt").write_text("not an image")
    args = list(TINY)
    args[args.index("builtin:shapes:128")] = str(data)
    code, out, err = cli("search", tmp_path / "study", *args, "--trials", "1")
    assert_one_line_error(code, err, contains=str(data.name))
    assert not (tmp_path / "study").exists()


def test_search_study_dir_alone_resumes_with_the_stored_settings(tmp_path: Path, cli) -> None:
    study_dir = tmp_path / "study"
    config = SearchConfig(study_dir=str(study_dir), space="tiny", data="builtin:shapes:128", n_trials=2,
                          proxy_images=32, proxy_batch=16, val_images=16, warm_start=(), device="cpu", seed=5)
    prepare_study(config)  # created and stamped, no trial run yet (an interrupted first run)
    stored = (study_dir / "search_config.json").read_text()
    code, out, err = cli("search", study_dir)
    assert code == 0, err
    assert out.startswith("resuming study 'memekit'")
    assert len(re.findall(r"^trial \d+ complete: val_loss [\d.]+, trajectory_gmacs [\d.]+.*; \d/2 finished$", out,
                          re.M)) == 2
    trials = finished(study_dir)
    assert len(trials) == 2
    run = json.loads((study_dir / "trials" / "trial-00000" / "config.json").read_text())
    assert run["images"] == 32 and run["seed"] == 5  # the stored proxy budget and seed, not the defaults
    assert (study_dir / "search_config.json").read_text() == stored


def test_a_rejected_invocation_writes_nothing(tmp_path: Path, cli) -> None:
    study_dir = tmp_path / "study"
    assert cli("search", study_dir, *TINY, "--trials", "1")[0] == 0
    files = {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file()}
    code, out, err = cli("search", study_dir, "--proxy-images", "64")
    assert_one_line_error(code, err, contains="different proxy_images (32, this command gives 64)")
    code, out, err = cli("search", study_dir, "--trials", "2", "--sampler", "random")
    line = assert_one_line_error(code, err, contains="--update")
    assert "n_trials 1" in line and "gives 2" in line
    assert {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file()} == files
    assert len(finished(study_dir)) == 1


def test_a_changed_setting_needs_update_and_is_recorded(tmp_path: Path, cli) -> None:
    study_dir = tmp_path / "study"
    assert cli("search", study_dir, *TINY, "--trials", "1")[0] == 0
    code, out, err = cli("search", study_dir, "--trials", "2", "--update")
    assert code == 0, err
    assert "changed study settings: n_trials 1 -> 2" in out
    loaded = load_study(study_dir)
    assert len(finished(study_dir)) == 2
    (change,) = loaded.study.user_attrs["memekit_changes"]
    assert change["changes"] == {"n_trials": [1, 2]} and change["time"]
    assert loaded.study.user_attrs["memekit_config"]["n_trials"] == 2
    assert json.loads((study_dir / "search_config.json").read_text())["n_trials"] == 2


def test_saved_configs_refuse_unknown_keys(tmp_path: Path, cli) -> None:
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    data = SearchConfig(study_dir=str(study_dir)).to_dict()
    (study_dir / "search_config.json").write_text(json.dumps({**data, "colour": "blue"}))
    code, out, err = cli("search", study_dir, "--dry-run")
    assert_one_line_error(code, err, contains="unknown search setting 'colour'")
    with pytest.raises(SearchError, match="unknown search setting 'colour'"):
        SearchConfig.from_dict({**data, "colour": "blue"})
    with pytest.raises(TrainingError, match="unknown training setting 'colour'"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "colour": "blue"})
    assert TrainConfig.from_dict(TrainConfig(batch=8).to_dict()) == TrainConfig(batch=8)  # the round trip holds


def test_an_interrupted_trial_is_paused_not_failed_and_resumes_in_its_folder(tmp_path: Path) -> None:
    """SIGINT/SIGTERM reach a search as the proxy training's TrainingInterrupted (its checkpoint written):
    the search stops there (nothing else is trained), the trial goes back to the queue marked paused,
    not FAIL, and the rerun resumes that same trial (number, parameters, run folder) and completes it."""
    from memekit.search.study import PAUSED_KEY, Seams
    from memekit.search.train import train
    from memekit.search.train_errors import TrainingInterrupted
    from memekit.search.workers import SearchPaused, run_search

    calls: list[str] = []

    def interrupted_second(spec, config, run_dir, *args, **kwargs):
        calls.append(Path(run_dir).name)
        if len(calls) == 2:
            raise TrainingInterrupted("SIGTERM at step 1: checkpoint written; rerun the same command to resume", 143)
        return train(spec, config, run_dir, *args, **kwargs)

    config = SearchConfig(study_dir=str(tmp_path / "study"), space="tiny", data="builtin:shapes:128", n_trials=3,
                          proxy_images=32, proxy_batch=16, val_images=16, warm_start=(), device="cpu", seed=1)
    with pytest.raises(SearchPaused, match=r"paused by SIGTERM: 1/3 trials finished, trial 1 paused \(stopped at "
                                           r"step 1; it resumes from its checkpoint\), 1 more to run; rerun") as info:
        run_search(config, progress=False, seams=Seams(train=interrupted_second))
    assert info.value.exit_code == 143
    assert calls == ["trial-00000", "trial-00001"]  # nothing trained after the interruption
    trials = load_study(config.study_dir).study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.WAITING]
    assert trials[1].system_attrs[PAUSED_KEY] == "stopped at step 1"
    run_search(config, progress=False, seams=Seams(train=interrupted_second))
    # the paused trial first, in its folder
    assert calls == ["trial-00000", "trial-00001", "trial-00001", "trial-00002"]
    after = load_study(config.study_dir).study.trials
    assert [t.state for t in after] == [TrialState.COMPLETE] * 3  # no FAIL, no extra trial
    assert after[1].params == trials[1].params and not after[1].system_attrs.get(PAUSED_KEY)
