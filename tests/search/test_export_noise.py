"""Reports that know their noise: seed noise from the study's records, differences read against it,
the sampler's start-up phase, the importances' trial count, warm-start projection labels and plot
labels that do not overlap. Studies are fabricated (Optuna ask/tell with values we choose, see
``test_export.fabricate_study``), so every expected number is worked out here by hand."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from scipy import stats
from test_export import fabricate_study

from memekit.search.export import importance_caveat, plot_importances, plot_pareto, trials_frame
from memekit.search.results import load_study, seed_noise, startup_phase
from memekit.search.warmstart import startup_note, warm_start_label

# a 10-trial study as `memekit search --trials 10` leaves it: 3 warm starts, then 7 start-up draws.
# The prior (1) is the best; meme-paper (0) is 0.001 worse, multi-same (2) 1.0 worse.
TEN = [{"quality": 2.001, "cost": 3.0, "warm_start": "meme-paper"},
       {"quality": 2.000, "cost": 3.0, "warm_start": "prior"},
       {"quality": 3.000, "cost": 3.0, "warm_start": "multi-same"},
       *({"quality": 4.0 + i, "cost": 1.0 + i} for i in range(7))]
# two trials retrained over two seeds each: deviations +-0.01 from their means, so the pooled
# SD is sqrt((4 x 0.01^2) / 2) = 0.01 sqrt(2), and two single runs differ with SE sqrt(2) SD = 0.02
RERANK = {"trials": [1, 0], "warm_start": ["prior", "meme-paper"], "seeds": [0, 1], "images": 16,
          "losses": [[2.0, 2.02], [2.001, 2.021]], "welch_p": None}


def export_report(tmp_path: Path, cli, points=TEN, rerank: dict | None = None, **fields) -> str:
    study = fabricate_study(tmp_path / "study", points, **fields)
    if rerank is not None:
        study.set_user_attr("rerank", rerank)
    code, _, err = cli("export", tmp_path / "study", "--out", tmp_path / "out", "--top", "3")
    assert code == 0, err
    return (tmp_path / "out" / "report.md").read_text()


def row_of(report: str, trial: int) -> str:
    section = report.split("## Differences and seed noise")[1].split("## Plots")[0]
    return next(line for line in section.splitlines() if line.startswith(f"| {trial} |"))


def test_report_flags_the_start_up_phase_and_differences_within_noise(tmp_path: Path, cli) -> None:
    report = export_report(tmp_path, cli, rerank=RERANK)
    # start-up: TPE draws its first 10 trials at random; 3 are warm starts, 7 random draws
    assert "**start-up phase:**" in report
    assert "3 warm start(s) and 7 random draws that do not depend on the data" in report
    assert "(random draws: trials 3, 4, 5, 6, 7, 8, 9)" in report
    # noise: SD 0.01 sqrt(2) over 2 trials, 4 runs, 2 dof; SE of a single-run difference 0.02
    assert f"Proxy seed SD of val_loss: {0.01 * math.sqrt(2):.3g}" in report and "2 dof" in report
    assert "SE sqrt(2) x SD = 0.02 " in report
    assert "Best feasible trial by val_loss: #1 (prior)" in report
    p_close = 2 * stats.t.sf(0.001 / 0.02, 2)
    p_far = 2 * stats.t.sf(1.0 / 0.02, 2)
    # Holm over the two comparisons (trials 0 and 2, warm starts and exported): the smaller p doubled, the
    # larger kept (Holm's factors are m = 2, then 1)
    assert row_of(report, 0).endswith(f"| {p_close:.3g} | indistinguishable |")
    assert row_of(report, 2).endswith(f"| {2 * p_far:.3g} | beyond the noise |")
    assert "1 of 2 differences from the best trial are within the seed noise" in report


def test_report_says_the_noise_is_unmeasured_and_how_to_measure_it(tmp_path: Path, cli) -> None:
    report = export_report(tmp_path, cli)
    assert "**Seed noise unmeasured.**" in report
    assert f"`memekit rerank {tmp_path / 'study'} --top 5 --seeds 2`" in report
    assert row_of(report, 0).endswith("| +0.001 | – | – | – | noise unmeasured |")
    assert "indistinguishable" not in report


def test_noise_at_another_budget_or_of_another_metric_is_not_used(tmp_path: Path, cli) -> None:
    other_budget = dict(RERANK, images=64)
    report = export_report(tmp_path / "a", cli, rerank=other_budget)
    assert "**Seed noise unmeasured.**" in report
    assert seed_noise(load_study(tmp_path / "a" / "study")) is None
    report = export_report(tmp_path / "b", cli, rerank=RERANK, quality="val-rel")
    assert "the study ranks by val_rel, whose noise is unmeasured" in report
    assert "beyond the noise" not in report and "indistinguishable" not in report


def test_a_val_rel_study_reads_its_differences_against_the_noise_of_val_rel(tmp_path: Path, cli) -> None:
    # rerank ranked by val_rel (scores) and recorded val_loss beside it (losses, far noisier here: unused)
    record = dict(RERANK, quality="val_rel", scores=[[2.0, 2.02], [2.001, 2.021]],
                  losses=[[1.0, 5.0], [1.0, 9.0]])
    report = export_report(tmp_path, cli, rerank=record, quality="val-rel")
    noise = seed_noise(load_study(tmp_path / "study"), "val_rel")
    assert noise.quality == "val_rel" and noise.sd.sd == pytest.approx(0.01 * math.sqrt(2))
    assert seed_noise(load_study(tmp_path / "study")).sd.sd > 1  # val_loss: from the losses
    assert f"Proxy seed SD of val_rel: {0.01 * math.sqrt(2):.3g}" in report
    p_close = 2 * stats.t.sf(0.001 / 0.02, 2)
    assert row_of(report, 0).endswith(f"| {p_close:.3g} | indistinguishable |")
    assert "whose noise is unmeasured" not in report


def test_fidelity_noise_runs_count_for_trials_rerank_left_out(tmp_path: Path) -> None:
    study = fabricate_study(tmp_path / "study", TEN)
    study.set_user_attr("rerank", dict(RERANK, trials=[1], losses=[[2.0, 2.02]]))
    study.set_user_attr("fidelity", {"noise": {"trial": 2, "proxy_val_loss": [3.0, 3.04, 3.02]}})
    noise = seed_noise(load_study(tmp_path / "study"))
    # SS: 2 x 0.01^2 + (0.02^2 + 0.02^2 + 0) = 0.001 over 1 + 2 dof
    assert noise.trials == (1, 2) and noise.runs == 5 and noise.sd.dof == 3
    assert noise.sd.sd == pytest.approx(math.sqrt(0.001 / 3))


def test_a_study_past_its_start_up_says_how_many_trials_were_random(tmp_path: Path) -> None:
    points = [dict(p) for p in TEN] + [{"quality": 9.0, "cost": 0.5}] * 4  # 14 trials: 10 .. 13 proposed
    fabricate_study(tmp_path / "study", points)
    phase = startup_phase(load_study(tmp_path / "study"))
    assert phase.warm == (0, 1, 2) and phase.random == (3, 4, 5, 6, 7, 8, 9) and phase.proposed == 4


def test_startup_note_closed_forms() -> None:
    note = startup_note("tpe", 10, 3)
    assert "3 warm start(s) and 7 random draws" in note and "--trials above 10" in note
    assert "7 of this study's 24 trials are random draws" in startup_note("tpe", 24, 3)
    assert "17 are proposed" not in startup_note("tpe", 24, 3) and "14 are proposed" in startup_note("tpe", 24, 3)
    assert "20 random draws" in startup_note("nsga2", 20, 0)
    assert "the random sampler draws every trial" in startup_note("random", 50, 3)
    assert startup_note("tpe", 3, 3) is None  # warm starts only: nothing random


def test_warm_start_label_names_every_nonzero_gap() -> None:
    assert (warm_start_label("prior", {"share": 0.125, "boundary": 0.0, "p": 0.0})
            == "prior (projected: share gap 0.125)")
    assert warm_start_label("meme-paper", {"share": 0.25, "boundary": 12.0, "p": 0.0}) == \
        "meme-paper (projected: share gap 0.25, boundary gap 12)"
    assert warm_start_label("prior", {"share": 0.0, "boundary": 0.0, "p": 0.0}) == "prior"
    assert warm_start_label("prior", None) == "prior" and warm_start_label("", {"share": 1.0}) == ""


def test_projected_warm_starts_are_labelled_in_report_and_plot(tmp_path: Path, cli) -> None:
    points = [dict(TEN[0], attrs={"projection_gap": {"share": 0.125, "boundary": 0.0, "p": 0.0}}),
              *TEN[1:3], dict(TEN[3], warm_start="single-large",
                              attrs={"projection_gap": {"share": 0.0, "boundary": 0.0, "p": 0.0}})]
    report = export_report(tmp_path, cli, points=points)
    assert "| 0 | meme-paper (projected: share gap 0.125) |" in report
    assert "| 3 | single-large |" in report  # held exactly: the bare name
    loaded = load_study(tmp_path / "study")
    legend = [t.get_text() for t in plot_pareto(loaded, trials_frame(loaded)).axes[0].get_legend().get_texts()]
    assert ("warm start #0: meme-paper (projected: share gap 0.125)" in legend
            and "warm start #3: single-large" in legend)


def test_trial_labels_of_close_points_do_not_overlap(tmp_path: Path) -> None:
    points = [{"quality": 1.0 + 0.001 * i, "cost": 5.0 - 0.001 * i} for i in range(8)]  # 8 near-identical points
    fabricate_study(tmp_path / "study", points)
    loaded = load_study(tmp_path / "study")
    fig = plot_pareto(loaded, trials_frame(loaded, list(range(8))))
    ax = fig.axes[0]
    fig.canvas.draw()  # text extents are known once drawn
    boxes = [t.get_window_extent(fig.canvas.get_renderer()) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"#{i}" for i in range(8))
    assert not [(a, b) for a, b in itertools.combinations(range(8), 2) if boxes[a].overlaps(boxes[b])]


def test_importances_carry_their_trial_count_and_a_warning(tmp_path: Path, cli) -> None:
    report = export_report(tmp_path, cli)
    loaded = load_study(tmp_path / "study")
    parameters = len({name for t in loaded.study.trials for name in t.params})
    assert f"parameter importances: 10 feasible complete trials, {parameters} parameters" in report
    assert "the ranking is not reliable" in report
    title = plot_importances(loaded).axes[0].get_title()
    assert f"10 trials, {parameters} parameters" in title and "too few trials" in title
    assert "not reliable" not in importance_caveat(60, 6) and "not reliable" in importance_caveat(60, 13)


def test_a_best_trial_from_the_start_up_draws_is_named_a_random_draw(tmp_path: Path, cli) -> None:
    # trial 5 (a start-up draw: TPE's first 10 trials are random) beats every warm start
    points = [dict(p) for p in TEN]
    points[5]["quality"] = 1.0
    report = export_report(tmp_path, cli, points=points)
    assert "Best feasible trial by val_loss: #5 (a random draw of the sampler's start-up)" in report
