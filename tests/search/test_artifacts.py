"""A finished trial's artifacts (memekit.search.artifacts): the sample grid and the per-t validation
loss, in the study's FileSystemArtifactStore, read back through Optuna's public API as
optuna-dashboard reads them, and checked against the trial's own user attributes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from conftest import tiny_spec
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_study import tiny_search

from memekit.search.artifacts import CURVE_ATTR, GRID_ATTR, PLOT_ATTR, validation_curve
from memekit.search.train import TrainConfig
from memekit.search.validation import VALIDATION_QUARTERS, validation_timesteps
from memekit.search.workers import run_search
from memekit.space import MemeSpec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def finished_trial(tmp_path_factory: pytest.TempPathFactory, memekit_cache: Path):
    """One trial of a tiny study with the real proxy training; the study reopened from its journal."""
    study_dir = tmp_path_factory.mktemp("study")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMEKIT_CACHE", str(memekit_cache))
        run_search(tiny_search(study_dir, n_trials=1), progress=False)
    storage = JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    (trial,) = optuna.load_study(study_name="memekit", storage=storage).trials
    return study_dir, storage, trial


def _download(study_dir: Path, artifact_id: str, tmp_path: Path) -> bytes:
    store = optuna.artifacts.FileSystemArtifactStore(str(study_dir / "artifacts"))
    path = tmp_path / artifact_id
    optuna.artifacts.download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
    return path.read_bytes()


def test_the_trial_lists_its_three_artifacts(finished_trial) -> None:
    study_dir, storage, trial = finished_trial
    assert trial.state == TrialState.COMPLETE
    metas = {m.artifact_id: m for m in optuna.artifacts.get_all_artifact_meta(trial, storage=storage)}
    by_attr = {attr: metas[trial.user_attrs[attr]] for attr in (GRID_ATTR, CURVE_ATTR, PLOT_ATTR)}
    assert len(metas) == 3
    assert by_attr[GRID_ATTR].filename.startswith("samples") and by_attr[GRID_ATTR].mimetype == "image/png"
    assert (by_attr[CURVE_ATTR].filename, by_attr[CURVE_ATTR].mimetype) == ("val_loss_per_t.json", "application/json")
    assert (by_attr[PLOT_ATTR].filename, by_attr[PLOT_ATTR].mimetype) == ("val_loss_per_t.png", "image/png")
    assert all((study_dir / "artifacts" / artifact_id).is_file() for artifact_id in metas)


def test_the_sample_grid_is_the_proxy_runs_last_grid(finished_trial, tmp_path: Path) -> None:
    study_dir, _, trial = finished_trial
    grid = _download(study_dir, trial.user_attrs[GRID_ATTR], tmp_path)
    (last,) = sorted((study_dir / "trials" / "trial-00000" / "samples").glob("*.png"))[-1:]
    assert grid.startswith(PNG_SIGNATURE) and grid == last.read_bytes()


def test_the_curve_matches_the_trials_user_attributes(finished_trial, tmp_path: Path) -> None:
    """The per-t numbers average to the trial's val_loss and val_rel, per quarter of [0, T) to its
    quarters, per interval of its spec to its val_rel_per_expert; t is the fixed validation grid."""
    study_dir, _, trial = finished_trial
    curve = json.loads(_download(study_dir, trial.user_attrs[CURVE_ATTR], tmp_path))
    attrs, spec = trial.user_attrs, MemeSpec.from_json(trial.user_attrs["spec"])
    T, ts, loss, rel = curve["timesteps"], curve["val_timesteps"], curve["val_loss_per_t"], curve["val_rel_per_t"]
    assert curve["trial"] == trial.number and T == spec.diffusion.timesteps
    K = TrainConfig(data="x").val_timesteps  # the proxy run's grid size (SearchConfig.proxy_config)
    assert ts == validation_timesteps(T, K) and len(loss) == len(rel) == len(curve["val_reference_per_t"]) == K
    assert curve["intervals"] == [list(i) for i in spec.intervals]
    assert _mean(loss) == pytest.approx(attrs["val_loss"], rel=1e-12)
    assert _mean(rel) == pytest.approx(attrs["val_rel"], rel=1e-12)
    for per_t, key in ((loss, "val_loss_quarters"), (rel, "val_rel_quarters")):
        quarters = [_mean([v for t, v in zip(ts, per_t, strict=True) if t * VALIDATION_QUARTERS // T == q])
                    for q in range(VALIDATION_QUARTERS)]
        assert quarters == pytest.approx(attrs[key], rel=1e-12)
    per_expert = [_mean([r for t, r in zip(ts, rel, strict=True) if lo <= t < hi]) for lo, hi in spec.intervals]
    assert per_expert == pytest.approx(attrs["val_rel_per_expert"], rel=1e-12)
    for t, value, reference in zip(ts, loss, curve["val_reference_per_t"], strict=True):  # val_rel's definition
        assert rel[ts.index(t)] == pytest.approx(math.log(value / reference), rel=1e-12)


def test_the_plot_is_a_png_kept_in_the_trial_folder(finished_trial, tmp_path: Path) -> None:
    study_dir, _, trial = finished_trial
    plot = _download(study_dir, trial.user_attrs[PLOT_ATTR], tmp_path)
    assert plot.startswith(PNG_SIGNATURE) and len(plot) > 5_000  # a drawn figure, not an empty canvas
    assert plot == (study_dir / "trials" / "trial-00000" / "val_loss_per_t.png").read_bytes()


def test_a_result_without_per_t_loss_has_no_curve() -> None:
    assert validation_curve({"val_loss": 1.0, "val_loss_quarters": [1.0] * 4}, tiny_spec()) is None
    with pytest.raises(ValueError, match="3 validation time-steps but 2 losses"):
        validation_curve({"val_timesteps": [1, 2, 3], "val_loss_per_t": [1.0, 2.0]}, tiny_spec())
