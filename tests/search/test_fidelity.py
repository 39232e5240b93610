"""``memekit fidelity``: rank agreement against closed forms and scipy, pairing of proxy and long
runs (with :func:`memekit.search.train.train` replaced by a fake whose val losses we choose), what
is saved, resumption with the real trainer, and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import assert_one_line_error, read_log
from scipy import stats
from test_export import fabricate_study

import memekit.search.retrain as retrain_module
from memekit.search.fidelity import FidelityError, proxy_fidelity, rank_agreement, spread_ranks
from memekit.search.results import load_study
from memekit.search.train import TrainConfig, TrainResult

Cli = Callable[..., tuple[int, str, str]]
LONG = 64

# proxy quality of 6 trials (trial 2 infeasible, trial 5 pruned); the best four feasible are 0, 3, 4, 1
POINTS = [
    {"quality": 1.0, "cost": 4.0},
    {"quality": 4.0, "cost": 1.0},
    {"quality": 0.1, "cost": 0.1, "feasible": False},
    {"quality": 2.0, "cost": 3.0, "warm_start": "meme-paper"},
    {"quality": 3.0, "cost": 2.0},
    {"state": "PRUNED"},
    {"quality": 5.0, "cost": 5.0},
]


class FakeTrain:
    """Stands in for ``train``: returns ``long_loss[trial number]`` as the final validation loss."""

    def __init__(self, long_loss: dict[int, float]) -> None:
        self.long_loss = long_loss
        self.calls: list[tuple[int, TrainConfig]] = []

    def __call__(self, spec: Any, config: TrainConfig, run_dir: str | Path, resume: Any = None,
                 progress: bool = True, on_validation: Any = None) -> TrainResult:
        number = int(Path(run_dir).name.split("-")[1])
        self.calls.append((number, config))
        val = {"val_loss": self.long_loss[number]}
        return TrainResult(Path(run_dir), config.steps, config.images, [], val, None, 0.0, 0.0)


# ---- rank agreement ------------------------------------------------------------------------------
def test_rank_agreement_closed_forms() -> None:
    # one discordant pair of 6: tau = (5 - 1) / 6; rank differences (0, 1, 1, 0): rho = 1 - 6*2/(4*15)
    a = rank_agreement([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0])
    assert a.kendall_tau == pytest.approx(2 / 3) and a.spearman_rho == pytest.approx(0.8)
    perfect = rank_agreement([0.1, 0.5, 0.7], [3.0, 4.0, 9.0])
    assert perfect.kendall_tau == pytest.approx(1.0) and perfect.spearman_rho == pytest.approx(1.0)
    reversed_ = rank_agreement([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert reversed_.kendall_tau == pytest.approx(-1.0) and reversed_.spearman_rho == pytest.approx(-1.0)


def test_rank_agreement_equals_scipy_with_ties() -> None:
    proxy, long = [1.0, 2.0, 2.0, 5.0, 3.0], [2.0, 1.0, 4.0, 4.0, 6.0]
    a = rank_agreement(proxy, long)
    assert a.kendall_tau == pytest.approx(stats.kendalltau(proxy, long).statistic)
    assert a.spearman_rho == pytest.approx(stats.spearmanr(proxy, long).statistic)
    with pytest.raises(FidelityError):
        rank_agreement([1.0, 2.0], [1.0, 2.0])


# ---- proxy_fidelity with a fake trainer ------------------------------------------------------------------
def test_pairs_top_k_proxy_with_long_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study_dir = tmp_path / "study"
    fabricate_study(study_dir, POINTS)
    long_loss = {0: 0.9, 3: 0.5, 4: 0.7, 1: 0.6}  # trial -> long-run val loss
    fake = FakeTrain(long_loss)
    monkeypatch.setattr(retrain_module, "train", fake)
    result = proxy_fidelity(study_dir, k=4, images=LONG)
    assert result.trials == (0, 3, 4, 1)  # by proxy quality; 2 infeasible, 5 pruned, 6 is 5th
    assert result.proxy == (1.0, 2.0, 3.0, 4.0)
    assert result.long == (0.9, 0.5, 0.7, 0.6)
    assert result.warm_start == ("", "meme-paper", "", "")
    assert result.agreement.kendall_tau == pytest.approx(stats.kendalltau(result.proxy, result.long).statistic)
    assert result.agreement.spearman_rho == pytest.approx(stats.spearmanr(result.proxy, result.long).statistic)
    # pairs (1, .9) (2, .5) (3, .7) (4, .6): 2 concordant and 4 discordant of 6 -> tau = -2/6
    assert result.agreement.kendall_tau == pytest.approx(-1 / 3)


def test_long_runs_keep_the_proxy_settings_but_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study_dir = tmp_path / "study"
    fabricate_study(study_dir, POINTS)
    fake = FakeTrain({0: 1.0, 3: 2.0, 4: 3.0})
    monkeypatch.setattr(retrain_module, "train", fake)
    proxy_fidelity(study_dir, k=3, images=LONG)
    proxy = load_study(study_dir).config.proxy_config()
    assert [n for n, _ in fake.calls] == [0, 3, 4]
    for _, config in fake.calls:
        assert config.images == LONG != proxy.images
        for name in ("data", "batch", "lr", "warmup_images", "seed", "val_images", "val_timesteps", "hflip",
                     "ema_decay", "grad_clip", "mixed_precision"):
            assert getattr(config, name) == getattr(proxy, name), name


def test_perfect_ranking_gives_one_and_is_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study_dir = tmp_path / "study"
    fabricate_study(study_dir, POINTS)
    export = study_dir / "export"
    export.mkdir()
    (export / "report.md").write_text("# Study\n\ntable\n")
    monkeypatch.setattr(retrain_module, "train", FakeTrain({0: 0.2, 3: 0.3, 4: 0.35}))
    result = proxy_fidelity(study_dir, k=3, images=LONG)
    assert result.agreement.kendall_tau == pytest.approx(1.0)
    assert result.agreement.spearman_rho == pytest.approx(1.0)
    stored = load_study(study_dir).study.user_attrs["fidelity"]
    saved = json.loads((study_dir / "fidelity.json").read_text())
    for record in (stored, saved):
        assert record["trials"] == [0, 3, 4] and record["long"] == [0.2, 0.3, 0.35]
        assert record["agreement"]["kendall_tau"] == pytest.approx(1.0)
    proxy_fidelity(study_dir, k=3, images=LONG)  # a rerun replaces the section, never duplicates it
    report = (export / "report.md").read_text()
    assert report.startswith("# Study\n\ntable\n") and report.count("## Proxy fidelity") == 1
    assert "| 3 | meme-paper | 2 | 0.3 | 2 | 2 |" in report
    monkeypatch.setattr(retrain_module, "train", FakeTrain({0: 0.2, 4: 0.35, 6: 0.5}))
    proxy_fidelity(study_dir, k=3, images=LONG, select="spread")  # a second section beside the first
    report = (export / "report.md").read_text()
    assert report.count("## Proxy fidelity") == 2 and "## Proxy fidelity (spread selection)" in report
    assert "| 3 | meme-paper | 2 | 0.3 | 2 | 2 |" in report and "| 6 |  | 5 | 0.5 | 3 | 3 |" in report


def test_cli_prints_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS)
    monkeypatch.setattr(retrain_module, "train", FakeTrain({0: 0.4, 3: 0.3, 4: 0.5}))
    code, out, err = cli("fidelity", tmp_path / "study", "--top", "3", "--images", str(LONG), "--quiet")
    assert code == 0, err
    # pairs (1, .4) (2, .3) (3, .5): one discordant pair of 3 -> tau = 1/3; rho = 1 - 6*2/24 = 0.5
    assert "Kendall tau = 0.333" in out and "Spearman rho = 0.500" in out
    assert [line.split()[0] for line in out.splitlines()[1:4]] == ["0", "3", "4"]


def test_spread_ranks_are_distinct_and_span_best_to_worst() -> None:
    assert spread_ranks(5, 3) == [0, 2, 4]
    assert spread_ranks(24, 8) == [0, 3, 7, 10, 13, 16, 20, 23]  # 23/7 = 3.29 apart, rounded half up
    assert spread_ranks(4, 4) == [0, 1, 2, 3]
    for n in range(3, 40):
        for k in range(3, n + 1):
            ranks = spread_ranks(n, k)
            assert len(set(ranks)) == k and ranks[0] == 0 and ranks[-1] == n - 1 and ranks == sorted(ranks)
    with pytest.raises(FidelityError):
        spread_ranks(3, 4)


def test_spread_selection_spans_the_feasible_ranking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS)  # feasible complete by proxy quality: 0, 3, 4, 1, 6
    monkeypatch.setattr(retrain_module, "train", FakeTrain({0: 0.1, 4: 0.3, 6: 0.2}))
    code, out, err = cli("fidelity", tmp_path / "study", "--spread", "3", "--images", str(LONG), "--quiet")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:4]] == ["0", "4", "6"]  # ranks 0, 2, 4 of 5
    # pairs (1, .1) (3, .3) (5, .2): one discordant pair of 3 -> tau = 1/3
    assert "Kendall tau = 0.333" in out
    saved = json.loads((tmp_path / "study" / "fidelity-spread.json").read_text())
    assert saved["selection"] == "spread" and saved["trials"] == [0, 4, 6]
    assert load_study(tmp_path / "study").study.user_attrs["fidelity-spread"]["trials"] == [0, 4, 6]
    assert not (tmp_path / "study" / "fidelity.json").exists()  # the top-K record is another one


def test_noise_seeds_give_the_seed_spread_at_both_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study_dir = tmp_path / "study"
    fabricate_study(study_dir, POINTS)  # the best three feasible: 0, 3, 4 with proxy 1.0, 2.0, 3.0
    seed0 = load_study(study_dir).config.seed
    calls: list[tuple[str, int, int]] = []

    def fake(spec: Any, config: TrainConfig, run_dir: str | Path, **kwargs: Any) -> TrainResult:
        calls.append((Path(run_dir).name, config.images, config.seed))
        if Path(run_dir).parent.name == "noise":  # trial 0 again: proxy 1.0 / long 0.4, shifted by the seed
            loss = (1.0 if config.images == 16 else 0.4) + 0.1 * (config.seed - seed0)
        else:
            loss = {"trial-00000": 0.4, "trial-00003": 0.5, "trial-00004": 0.9}[Path(run_dir).name]
        return TrainResult(Path(run_dir), 0, config.images, [], {"val_loss": loss}, None, 0.0, 0.0)

    monkeypatch.setattr(retrain_module, "train", fake)
    result = proxy_fidelity(study_dir, k=3, images=LONG, noise_seeds=2)
    assert result.long == (0.4, 0.5, 0.9)  # the noise runs do not enter the rank agreement
    noise_runs = sorted(c for c in calls if c[0].startswith("trial-00000-images"))
    assert [(images, seed) for _, images, seed in noise_runs] == sorted(
        [(16, seed0 + 1), (16, seed0 + 2), (LONG, seed0 + 1), (LONG, seed0 + 2)])
    noise = result.noise
    assert noise["trial"] == 0 and noise["seeds"] == [seed0, seed0 + 1, seed0 + 2]
    assert noise["proxy_val_loss"] == pytest.approx([1.0, 1.1, 1.2])
    assert noise["long_val_loss"] == pytest.approx([0.4, 0.5, 0.6])
    assert noise["proxy_noise_std"] == pytest.approx(0.1) and noise["long_noise_std"] == pytest.approx(0.1)
    assert noise["proxy_spread_std"] == pytest.approx(1.0)  # std of 1, 2, 3
    assert noise["long_spread_std"] == pytest.approx(stats.tstd([0.4, 0.5, 0.9]))
    saved = json.loads((study_dir / "fidelity.json").read_text())
    assert saved["noise"]["seeds"] == [seed0, seed0 + 1, seed0 + 2]


def test_top_and_spread_are_exclusive(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS)
    code, _, err = cli("fidelity", tmp_path / "study", "--top", "3", "--spread", "3", "--images", str(LONG))
    assert_one_line_error(code, err, contains="not allowed with argument --top")


# ---- the real trainer: resumable -------------------------------------------------------------------------
def test_finished_runs_are_not_retrained(tmp_path: Path) -> None:
    study_dir = tmp_path / "study"
    fabricate_study(study_dir, POINTS[:5])
    first = proxy_fidelity(study_dir, k=3, images=32)
    logs = {n: read_log(study_dir / "fidelity" / f"trial-{n:05d}") for n in first.trials}
    assert all(any(r.get("event") == "train" for r in log) for log in logs.values())
    second = proxy_fidelity(study_dir, k=3, images=32)
    assert second.long == first.long
    for n in first.trials:
        log = read_log(study_dir / "fidelity" / f"trial-{n:05d}")
        assert sum(r.get("event") == "train" for r in log) == sum(r.get("event") == "train" for r in logs[n])
        assert log[-1].get("note") == "budget already reached"


def test_parallel_jobs_equal_serial_runs(tmp_path: Path) -> None:
    serial_dir, parallel_dir = tmp_path / "serial", tmp_path / "parallel"
    for folder in (serial_dir, parallel_dir):
        fabricate_study(folder, POINTS[:5])
    serial = proxy_fidelity(serial_dir, k=3, images=32)
    parallel = proxy_fidelity(parallel_dir, k=3, images=32, jobs=2)  # two spawned processes, one thread each
    assert parallel.trials == serial.trials
    assert parallel.long == pytest.approx(serial.long, rel=1e-5)
    for n in parallel.trials:
        assert (parallel_dir / "fidelity" / f"trial-{n:05d}" / "checkpoints").is_dir()


# ---- bad input ----------------------------------------------------------------------------------------------
def test_k_too_small_is_one_line(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS)
    code, _, err = cli("fidelity", tmp_path / "study", "--top", "2", "--images", str(LONG))
    assert_one_line_error(code, err, contains="K >= 3")
    assert not (tmp_path / "study" / "fidelity").exists()


def test_more_trials_than_feasible_is_one_line(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS)
    code, _, err = cli("fidelity", tmp_path / "study", "--top", "6", "--images", str(LONG))
    assert_one_line_error(code, err, contains="only 5 feasible")


def test_budget_not_longer_is_one_line(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS)
    code, _, err = cli("fidelity", tmp_path / "study", "--top", "3", "--images", "16")
    assert_one_line_error(code, err, contains="must exceed the proxy budget")


def test_missing_study_dir_is_one_line(tmp_path: Path, cli: Cli) -> None:
    code, _, err = cli("fidelity", tmp_path / "nowhere", "--top", "3", "--images", str(LONG))
    assert_one_line_error(code, err, contains="does not exist")


# ---- long runs scored by sample quality ------------------------------------------------------------------
class FakeSampleMetrics:
    """Stands in for ``memekit.search.metrics.sample_metrics``: KID and FID by trial number."""

    def __init__(self, kid: dict[int, float]) -> None:
        self.kid, self.calls = kid, []

    def __call__(self, run: Any, reference: str, n: int, steps: int = 25, seeds: int = 1, **kwargs: Any):
        name = Path(run).name
        number = int(name.split("-")[1])
        self.calls.append((name, reference, n, steps))
        kid = self.kid[number] + (0.01 * int(name.rsplit("-", 1)[1]) if "seed" in name else 0.0)
        return SimpleNamespace(to_dict=lambda: {"kid_mean": kid, "fid_mean": 100 * kid, "n": n})


KID_POINTS = [  # proxy val_loss orders 0 < 3 < 4 < 1; val_rel orders 3 < 0 < 1 < 4
    {"quality": 1.0, "cost": 4.0, "attrs": {"val_loss": 1.0, "val_rel": 0.2}},
    {"quality": 4.0, "cost": 1.0, "attrs": {"val_loss": 4.0, "val_rel": 0.3}},
    {"quality": 2.0, "cost": 3.0, "attrs": {"val_loss": 2.0, "val_rel": 0.1}},
    {"quality": 3.0, "cost": 2.0, "attrs": {"val_loss": 3.0, "val_rel": 0.4}},
]


def test_kid_target_ranks_every_recorded_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import memekit.search.metrics as metrics_module
    from memekit.search.retrain import Target

    fabricate_study(tmp_path / "study", KID_POINTS)
    monkeypatch.setattr(retrain_module, "train", FakeTrain({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8}))
    fake = FakeSampleMetrics({0: 0.05, 1: 0.08, 2: 0.02, 3: 0.09})  # KID orders 2 < 0 < 1 < 3
    monkeypatch.setattr(metrics_module, "sample_metrics", fake)
    target = Target("kid", n=10, steps=3, reference="builtin:shapes")
    result = proxy_fidelity(tmp_path / "study", k=4, images=LONG, target=target, noise_seeds=2)
    assert result.target == "kid10" and result.trials == (0, 2, 3, 1)
    assert result.long == pytest.approx((0.05, 0.02, 0.09, 0.08))
    assert result.long_val_loss == pytest.approx((0.5, 0.7, 0.8, 0.6))
    assert set(result.agreements) == {"val_loss", "val_rel"}
    for name, proxy in (("val_loss", [1.0, 2.0, 3.0, 4.0]), ("val_rel", [0.2, 0.1, 0.4, 0.3])):
        assert result.proxies[name] == pytest.approx(proxy)
        assert result.agreements[name].kendall_tau == pytest.approx(stats.kendalltau(proxy, result.long).statistic)
    # the seed noise of the target: trial 0 at seeds 0, 1, 2 scores 0.05, 0.06, 0.07
    assert result.noise["long_kid10"] == pytest.approx([0.05, 0.06, 0.07])
    assert result.noise["long_noise_std"] == pytest.approx(0.01)
    assert all(call[1:] == ("builtin:shapes", 10, 3) for call in fake.calls) and len(fake.calls) == 6
    saved = json.loads((tmp_path / "study" / "fidelity-kid.json").read_text())
    assert saved["target"] == "kid10" and saved["agreements"]["val_rel"]["kendall_tau"] == pytest.approx(
        result.agreements["val_rel"].kendall_tau)
    proxy_fidelity(tmp_path / "study", k=4, images=LONG, target=target, noise_seeds=2)
    assert len(fake.calls) == 6  # scores are cached in each run folder


def test_unknown_or_incomplete_targets_fail_with_one_line(tmp_path: Path, cli: Cli) -> None:
    from memekit.search.retrain import RetrainError, Target

    with pytest.raises(RetrainError, match="unknown target"):
        Target("lpips")
    with pytest.raises(RetrainError, match="reference set"):
        Target("kid", n=10, steps=3, reference="")
    fabricate_study(tmp_path / "study", POINTS)
    code, out, err = cli("fidelity", str(tmp_path / "study"), "--images", str(LONG), "--target", "lpips")
    assert code == 2 and "invalid choice" in err and out == ""
