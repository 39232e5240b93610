"""``memekit rerank``: which runs it trains (trials, seeds, budgets, folders), the ranking by mean
and Welch's test against scipy, what is saved, and bad input (with a fake trainer whose validation
losses we choose)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_one_line_error
from scipy import stats
from test_export import fabricate_study
from test_fidelity import POINTS

import memekit.search.retrain as retrain_module
from memekit.search.rerank import rerank, rerank_text, save_rerank
from memekit.search.results import load_study
from memekit.search.train import TrainConfig, TrainResult

PROXY = 16  # fabricate_study's proxy budget; the best three feasible trials are 0, 3, 4 (proxy 1, 2, 3)


class SeededFake:
    """``train`` stand-in: ``losses[trial][seed - seed0]``, and a record of every call."""

    def __init__(self, losses: dict[int, list[float]], seed0: int) -> None:
        self.losses, self.seed0 = losses, seed0
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, spec: Any, config: TrainConfig, run_dir: str | Path, **kwargs: Any) -> TrainResult:
        name = Path(run_dir).name
        self.calls.append((name, config.images, config.seed))
        loss = self.losses[int(name.split("-")[1])][config.seed - self.seed0]
        return TrainResult(Path(run_dir), 0, config.images, [], {"val_loss": loss}, None, 0.0, 0.0)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    fabricate_study(tmp_path / "study", POINTS)
    return tmp_path / "study"


def test_proxy_budget_reuses_the_study_run_and_ranks_by_mean(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_study(study)
    seed0 = loaded.config.seed
    # index 0 (the study's own seed) is never trained at the proxy budget: the study's value is used
    fake = SeededFake({0: [np.nan, 5.0, 5.0], 3: [np.nan, 2.1, 1.9], 4: [np.nan, 3.0, 3.2]}, seed0)
    monkeypatch.setattr(retrain_module, "train", fake)
    result = rerank(loaded, k=3, seeds=2)
    assert sorted(fake.calls) == sorted((f"trial-{n:05d}-images-{PROXY}-seed-{seed0 + i}", PROXY, seed0 + i)
                                        for n in (0, 3, 4) for i in (1, 2))
    assert result.seeds == (seed0, seed0 + 1, seed0 + 2) and result.images == PROXY
    assert result.losses == ((1.0, 5.0, 5.0), (2.0, 2.1, 1.9), (3.0, 3.0, 3.2))
    frame = result.frame()
    assert frame["trial"].tolist() == [3, 4, 0]  # by mean: 2.0, 3.067, 3.667 (proxy order was 0, 3, 4)
    assert frame["mean"].tolist() == pytest.approx([2.0, 9.2 / 3, 11 / 3])
    assert frame.loc[0, "std"] == pytest.approx(0.1) and frame.loc[0, "sem"] == pytest.approx(0.1 / np.sqrt(3))
    expected = stats.ttest_ind([2.0, 2.1, 1.9], [3.0, 3.0, 3.2], equal_var=False).pvalue
    assert result.welch_p == pytest.approx(expected) and result.welch_p < 0.05


def test_another_budget_trains_the_study_seed_too(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_study(study)
    seed0 = loaded.config.seed
    fake = SeededFake({n: [0.5, 0.6] for n in (0, 3, 4)}, seed0)
    monkeypatch.setattr(retrain_module, "train", fake)
    result = rerank(loaded, k=3, seeds=1, images=64)
    assert sorted(c[1:] for c in fake.calls) == sorted((64, seed0 + i) for _ in range(3) for i in (0, 1))
    assert result.seeds == (seed0, seed0 + 1) and result.losses == ((0.5, 0.6),) * 3


def test_no_spread_means_no_test(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_study(study)
    # the first two trials give 1.5 at every seed: t = 0 / 0, undefined
    monkeypatch.setattr(retrain_module, "train", SeededFake({0: [1.5, 1.5], 3: [1.5, 1.5], 4: [3.0, 3.0]},
                                                             loaded.config.seed))
    result = rerank(loaded, k=3, seeds=1, images=64)
    assert np.isnan(result.welch_p) and result.to_dict()["welch_p"] is None
    assert "trial 0 has the best mean; no test against trial 3" in rerank_text(result)


def test_saved_to_study_json_and_report(study: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    export = study / "export"
    export.mkdir()
    (export / "report.md").write_text("# Study\n")
    monkeypatch.setattr(retrain_module, "train", SeededFake({0: [0, 1.1], 3: [0, 2.2], 4: [0, 3.3]},
                                                             load_study(study).config.seed))
    code, out, err = cli("rerank", study, "--top", "3", "--seeds", "1")
    assert code == 0, err
    assert [line.split()[1] for line in out.splitlines()[1:4]] == ["0", "3", "4"]  # means 1.05, 2.1, 3.15
    assert "trial 0 has the best mean val_loss over 2 seeds" in out
    saved = json.loads((study / "rerank.json").read_text())
    assert saved["trials"] == [0, 3, 4] and saved["losses"] == [[1.0, 1.1], [2.0, 2.2], [3.0, 3.3]]
    assert load_study(study).study.user_attrs["rerank"]["trials"] == [0, 3, 4]
    report = (export / "report.md").read_text()
    assert report.startswith("# Study\n") and report.count("## Re-ranked over seeds") == 1
    save_rerank(load_study(study), rerank(load_study(study), k=3, seeds=1))  # a rerun replaces the section
    assert (export / "report.md").read_text().count("## Re-ranked over seeds") == 1


class RelFake(SeededFake):
    """A val-rel study's runs: ``val_rel`` per seed as chosen, ``val_loss`` ordering the trials the other way."""

    def __init__(self, rel: dict[int, list[float]], seed0: int) -> None:
        super().__init__(rel, seed0)

    def __call__(self, spec: Any, config: TrainConfig, run_dir: str | Path, **kwargs: Any) -> TrainResult:
        result = super().__call__(spec, config, run_dir, **kwargs)
        rel = result.val["val_loss"]
        return TrainResult(Path(run_dir), 0, config.images, [], {"val_loss": 10.0 - rel, "val_rel": rel}, None, 0.0,
                           0.0)


def test_a_val_rel_study_is_ranked_and_tested_by_val_rel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fabricate_study(tmp_path / "study", POINTS, quality="val-rel")
    loaded = load_study(tmp_path / "study")
    seed0 = loaded.config.seed
    # val_rel per seed (all three trained: the study's own value is val_rel of one run, not reused)
    rel = {0: [0.30, 0.34, 0.32], 3: [-0.10, -0.12, -0.08], 4: [0.01, 0.02, 0.0]}
    monkeypatch.setattr(retrain_module, "train", RelFake(rel, seed0))
    result = rerank(loaded, k=3, seeds=2)
    assert result.quality == "val_rel" and result.seeds == (seed0, seed0 + 1, seed0 + 2)
    assert result.scores == tuple(tuple(rel[n]) for n in (0, 3, 4))
    assert result.losses == tuple(tuple(10.0 - v for v in rel[n]) for n in (0, 3, 4))
    frame = result.frame()
    assert frame["trial"].tolist() == [3, 4, 0]  # by mean val_rel -0.10, 0.01, 0.32 (val_loss would say 0, 4, 3)
    assert frame["mean_val_loss"].tolist() == pytest.approx([10.10, 9.99, 9.68])
    assert result.welch_p == pytest.approx(stats.ttest_ind(rel[3], rel[4], equal_var=False).pvalue)
    text = rerank_text(result)
    assert "mean val_rel" in text and "mean val_loss" in text and "best mean val_rel over 3 seeds" in text
    assert result.to_dict()["quality"] == "val_rel"


def test_bad_input_is_one_line(study: Path, cli) -> None:
    code, _, err = cli("rerank", study, "--top", "2")
    assert_one_line_error(code, err, contains="K >= 3")
    code, _, err = cli("rerank", study, "--seeds", "0")
    assert_one_line_error(code, err, contains="--seeds")
    code, _, err = cli("rerank", study, "--images", "4")
    assert_one_line_error(code, err, contains="smaller than one batch")
