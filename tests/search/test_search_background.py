"""``memekit search --background``: what transparent pixels of the data become is part of a study's
identity; the study's checks, its statistics and every proxy run load the data with it, and say
once what was composited."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from conftest import assert_one_line_error, run_memekit
from PIL import Image

from memekit.analysis.data import DEFAULT_BACKGROUND
from memekit.search.study import (
    Seams,
    SearchConfig,
    SearchError,
    data_space,
    open_study,
    plan_study,
    prepare_study,
    stored_config,
)
from memekit.search.train import TrainConfig, TrainResult, with_preconditioning
from memekit.search.workers import run_search
from memekit.space import get_preset

N_SPRITES = 40  # 4 of them fall in the reference split (crc32 of the file name)


def sprites(folder: Path) -> Path:
    """RGBA sprites: an opaque patch of random colours on fully transparent pixels whose hidden colour
    is green."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_SPRITES):
        rgba = np.zeros((8, 8, 4), np.uint8)
        rgba[..., 1] = 255  # green where alpha is 0: must never show
        top, left = rng.integers(0, 4, 2)
        rgba[top:top + 4, left:left + 4, :3] = rng.integers(0, 256, (4, 4, 3))
        rgba[top:top + 4, left:left + 4, 3] = 255
        Image.fromarray(rgba, mode="RGBA").save(folder / f"sprite-{i:02d}.png")
    return folder


def args_for(data: Path) -> list[str]:
    return ["--space", "tiny", "--data", str(data), "--trials", "1", "--proxy-images", "32", "--proxy-batch", "16",
            "--val-images", "4", "--warm-start", "", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_background_is_checked_said_once_and_reaches_every_proxy_run(tmp_path: Path, cli) -> None:
    data = sprites(tmp_path / "sprites")
    study_dir = tmp_path / "study"
    code, out, err = cli("search", study_dir, *args_for(data), "--background", "black", "--dry-run")
    assert code == 0, err
    notes = [line for line in out.splitlines() if "composited" in line]
    assert notes == [f"data: {data}: composited {N_SPRITES} images with transparency onto black (0, 0, 0)"]
    assert "transparent pixels onto black (0, 0, 0)" in out
    code, out, err = cli("search", study_dir, *args_for(data), "--background", "#102030", "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["config"]["background"] == [16, 32, 48] and plan["proxy"]["background"] == [16, 32, 48]

    seen: list[TrainConfig] = []

    def record(spec: Any, config: TrainConfig, run_dir: Path, *args: Any, **kwargs: Any) -> TrainResult:
        seen.append(config)
        return TrainResult(run_dir=Path(run_dir), steps=config.steps, images_seen=config.images,
                           images_per_expert=[config.images] * spec.n_experts, val={"val_loss": 1.0}, checkpoint=None,
                           wall_time_s=0.0, train_images_per_s=1.0)

    config = SearchConfig(study_dir=str(study_dir), space="tiny", data=str(data), n_trials=1, proxy_images=32,
                          proxy_batch=16, val_images=4, warm_start=(), device="cpu", background=(0, 0, 0))
    lines: list[str] = []
    run_search(config, progress=False, seams=Seams(train=record), say=lines.append)
    assert [c.background for c in seen] == [(0, 0, 0)]  # the proxy run composites onto the study's background
    assert sum("composited" in line for line in lines) == 1  # said once by the study, not once per trial
    assert stored_config(study_dir).background == (0, 0, 0)
    code, out, err = cli("search", study_dir, "--background", "white", "--dry-run")
    assert_one_line_error(code, err, contains="different background ([0, 0, 0], this command gives [255, 255, 255])")


def test_the_background_changes_what_the_study_measures(tmp_path: Path) -> None:
    """The preconditioning statistics are measured from the data as composited: grey and black
    backgrounds under the same sprites give different data statistics."""
    data = sprites(tmp_path / "sprites")
    stds = {}
    for name, colour in (("grey", DEFAULT_BACKGROUND), ("black", (0, 0, 0))):
        config = SearchConfig(study_dir=str(tmp_path / name), space="tiny", data=str(data), n_trials=1,
                              warm_start=(), device="cpu", background=colour)
        prepare_study(config)
        stds[name] = json.loads((tmp_path / name / "diffusion.json").read_text())["data_std"]
    assert stds["grey"] != stds["black"]


def test_a_study_and_a_training_run_measure_one_preconditioning(tmp_path: Path) -> None:
    """``search`` and ``train`` resolve a preconditioning the same way: a study's planned diffusion
    spec is what :func:`with_preconditioning` gives a spec of the same base diffusion and size, on the
    same data and background (and the background reaches both: grey gives other statistics)."""
    data = sprites(tmp_path / "sprites")
    config = SearchConfig(study_dir=str(tmp_path / "study"), space="tiny", data=str(data), n_trials=1,
                          warm_start=(), device="cpu", background=(0, 0, 0))
    planned = plan_study(config).diffusion
    space = data_space(config)
    spec = dataclasses.replace(get_preset("meme-paper", space.base_expert.resolution), diffusion=space.diffusion)
    trained = with_preconditioning(spec, "wiener", str(data), background=(0, 0, 0)).diffusion
    assert planned.preconditioning == trained.preconditioning == "wiener"
    assert planned == trained
    grey = with_preconditioning(spec, "wiener", str(data)).diffusion
    assert grey.data_std != trained.data_std
    assert not (tmp_path / "study").exists()  # planning wrote nothing


def test_a_study_made_before_background_existed_resumes_with_the_default(tmp_path: Path) -> None:
    config = SearchConfig(study_dir=str(tmp_path), space="tiny", data="builtin:shapes:128", n_trials=1,
                          warm_start=(), device="cpu", preconditioning="none")
    prepare_study(config)
    study = open_study(config, seed=0)
    study.set_user_attr("memekit_config", {k: v for k, v in study.user_attrs["memekit_config"].items()
                                           if k != "background"})  # as memekit wrote it before the setting
    config_file = tmp_path / "search_config.json"
    config_file.write_text(json.dumps({k: v for k, v in json.loads(config_file.read_text()).items()
                                       if k != "background"}))
    assert stored_config(tmp_path).background == DEFAULT_BACKGROUND
    open_study(config, seed=0)  # no error: the same data
    with pytest.raises(SearchError, match="different background"):
        open_study(SearchConfig(**{**config.to_dict(), "background": (0, 0, 0)}), seed=0)


@pytest.mark.parametrize("value", ["purple", "1,2", "#12345"])
def test_a_bad_background_is_a_one_line_usage_error(tmp_path: Path, value: str) -> None:
    result = run_memekit("search", tmp_path / "study", "--background", value, "--dry-run")
    line = assert_one_line_error(result.returncode, result.stderr, contains=f"argument --background: background "
                                                                            f"{value!r} is not a colour")
    assert "grey, black, white" in line
    assert not (tmp_path / "study").exists()
