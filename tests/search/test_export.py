"""``memekit export``: spec round trip, written files, trial selection and bad input.

One real study (the ``tiny`` space, 3 proxy trials on 128 built-in images, the ``meme-paper`` warm
start) checks the round trip trial.params -> FixedTrial -> spec/params/MACs and the export folder;
studies fabricated with Optuna's ask/tell and values we choose check the selection against a
closed-form Pareto set.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import assert_one_line_error
from optuna.trial import TrialState

from memekit.search.export import plot_importances, plot_pareto, trials_frame
from memekit.search.results import load_study, select_trials, trial_spec
from memekit.search.searchspace import load_search_space, param_label, suggest_spec
from memekit.search.storage import open_storage
from memekit.search.study import SearchConfig
from memekit.search.workers import run_search
from memekit.space import DiffusionSpec, ExpertSpec, MemeSpec, load_spec, spec_cost

Cli = Callable[..., tuple[int, str, str]]
STUDY_DATA = "builtin:shapes:128"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_search_config(study_dir: Path, **fields) -> SearchConfig:
    base = dict(study_dir=str(study_dir), space="tiny", data=STUDY_DATA, proxy_images=32, proxy_batch=16,
                val_images=16, n_trials=3, warm_start=("meme-paper",), device="cpu")
    base.update(fields)
    return SearchConfig(**base)


@pytest.fixture(scope="module")
def real_study(tmp_path_factory: pytest.TempPathFactory, memekit_cache: Path) -> Path:
    """A finished tiny study: 3 proxy-trained trials, trial 0 the enqueued meme-paper baseline."""
    study_dir = tmp_path_factory.mktemp("study") / "tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MEMEKIT_CACHE", str(memekit_cache))
            run_search(tiny_search_config(study_dir), progress=False)
    finally:
        torch.set_num_threads(threads)
        optuna.logging.set_verbosity(verbosity)
    return study_dir


# ---- fabricated studies ------------------------------------------------------------------------
def fabricate_study(study_dir: Path, points: Sequence[dict], objective: str = "multi",
                    name: str = "fabricated", **fields) -> optuna.Study:
    """A study as ``memekit search`` leaves it, with chosen values instead of proxy training.

    Each point: ``quality`` (and ``cost`` when multi-objective), optional ``feasible`` (default
    True), ``state`` ("COMPLETE" or "PRUNED"), ``warm_start``, ``attrs`` (more user attrs) and
    ``tampered`` (the recorded spec
    is not the one its params give). Parameters are real draws from the ``tiny`` space, so every
    trial's spec can be rebuilt.
    """
    fields = {"preconditioning": "none", **fields}  # no proxy training: nothing measured the data
    config = tiny_search_config(study_dir, study_name=name, objective=objective, proxy_images=16,
                                n_trials=len(points), warm_start=(), **fields)
    study_dir.mkdir(parents=True)
    (study_dir / "search_config.json").write_text(json.dumps(config.to_dict()))
    study = optuna.create_study(study_name=name, storage=open_storage(None, study_dir),
                                directions=["minimize"] * (2 if objective == "multi" else 1),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("memekit_config", config.to_dict())
    space = load_search_space("tiny")
    for point in points:
        trial = study.ask()
        spec = suggest_spec(trial, space)
        if point.get("tampered"):
            spec = dataclasses.replace(spec, soft_assignment=(1.0, 1.0))
        trial.set_user_attr("spec", spec.to_json(indent=None))
        if "cost" in point:
            trial.set_user_attr("trajectory_gmacs", point["cost"])
        trial.set_user_attr("params_total", 1000 + trial.number)
        if point.get("warm_start"):
            trial.set_user_attr("warm_start", point["warm_start"])
        for key, value in point.get("attrs", {}).items():  # recorded proxy figures (val_loss, val_rel, ...)
            trial.set_user_attr(key, value)
        trial.set_constraint("budget", -1.0 if point.get("feasible", True) else 0.5)
        if point.get("state") == "PRUNED":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, (point["quality"], point["cost"]) if objective == "multi" else point["quality"])
    return study


# front on the line q + c = 5 (no point dominates another), dominated points, one infeasible point
# that would dominate everything, one pruned trial
POINTS = [
    {"quality": 2.5, "cost": 3.5},                      # 0 dominated by 3
    {"quality": 1.0, "cost": 4.0},                      # 1 front
    {"quality": 0.5, "cost": 0.5, "feasible": False},   # 2 infeasible
    {"quality": 2.0, "cost": 3.0, "warm_start": "meme-paper"},  # 3 front
    {"quality": 4.5, "cost": 1.5},                      # 4 dominated by 6
    {"quality": 3.0, "cost": 2.0},                      # 5 front
    {"quality": 4.0, "cost": 1.0},                      # 6 front
    {"quality": 1.5, "cost": 4.5},                      # 7 dominated by 1
    {"state": "PRUNED"},                                # 8
]


def closed_form_front(points: Sequence[dict]) -> set[int]:
    """Feasible complete points that no other feasible complete point dominates."""
    ok = [i for i, p in enumerate(points) if p.get("state") != "PRUNED" and p.get("feasible", True)]

    def dominates(a: dict, b: dict) -> bool:
        return (a["quality"] <= b["quality"] and a["cost"] <= b["cost"]
                and (a["quality"] < b["quality"] or a["cost"] < b["cost"]))

    return {i for i in ok if not any(dominates(points[j], points[i]) for j in ok if j != i)}


def test_pareto_selection_is_the_closed_form_front(tmp_path: Path) -> None:
    study = fabricate_study(tmp_path / "study", POINTS)
    chosen = select_trials(study)
    assert {t.number for t in chosen} == closed_form_front(POINTS) == {1, 3, 5, 6}
    assert [t.number for t in chosen] == [1, 3, 5, 6]  # ordered by quality


def test_top_k_ranks_feasible_complete_trials_by_quality(tmp_path: Path) -> None:
    study = fabricate_study(tmp_path / "study", POINTS)
    assert [t.number for t in select_trials(study, top=3)] == [1, 7, 3]  # 2 is infeasible, 7 is dominated
    assert [t.number for t in select_trials(study, top=100)] == [1, 7, 3, 0, 5, 6, 4]


def test_single_objective_top_k_and_best(tmp_path: Path) -> None:
    points = [{"quality": 3.0}, {"quality": 1.0, "feasible": False}, {"quality": 2.0}, {"quality": 0.5},
              {"state": "PRUNED"}]
    study = fabricate_study(tmp_path / "study", points, objective="single")
    assert [t.number for t in select_trials(study, top=2)] == [3, 2]
    assert [t.number for t in select_trials(study)] == [3]


def test_cli_pareto_exports_exactly_the_front(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS)
    code, out, err = cli("export", tmp_path / "study", "--out", tmp_path / "out", "--pareto")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("trial-*.json")) == \
        [f"trial-{n:05d}.json" for n in sorted(closed_form_front(POINTS))]
    report = (tmp_path / "out" / "report.md").read_text()
    exported = report.split("## Exported trials")[1].split("## Differences and seed noise")[0]
    rows = [line for line in exported.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [1, 3, 5, 6]
    all_trials = report.split("## All trials")[1]
    assert "| 2 |" in all_trials and "infeasible" in all_trials and "PRUNED" in all_trials


def test_cli_top_k_exports_the_k_best(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS)
    code, _, err = cli("export", tmp_path / "study", "--out", tmp_path / "out", "--top", "2")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("trial-*.json")) == ["trial-00001.json",
                                                                                 "trial-00007.json"]


def test_spec_that_differs_from_its_params_is_reported(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", [{"quality": 1.0, "cost": 1.0, "tampered": True}])
    out = tmp_path / "out"
    code, _, err = cli("export", tmp_path / "study", "--out", out)
    assert code == 0, err
    assert "warning: trial 0: spec differs in soft_assignment" in err
    trial = load_study(tmp_path / "study").study.trials[0]
    rebuilt = suggest_spec(optuna.trial.FixedTrial(trial.params), load_search_space("tiny"))
    assert load_spec(out / "trial-00000.json").soft_assignment == (1.0, 1.0)  # what was trained
    assert load_spec(out / "trial-00000.rebuilt.json") == rebuilt
    assert rebuilt.soft_assignment != (1.0, 1.0)
    assert "spec check, trial 0:** spec differs in soft_assignment" in (out / "report.md").read_text()


# ---- the real study ------------------------------------------------------------------------------------
def test_round_trip_params_to_spec_params_and_macs(real_study: Path) -> None:
    loaded = load_study(real_study)
    trials = loaded.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3 and trials[0].user_attrs["warm_start"] == "meme-paper"
    diffusion = DiffusionSpec.from_dict(json.loads((real_study / "diffusion.json").read_text()))
    assert diffusion.preconditioning == "wiener"  # the default: measured once, carried by every trial
    space = dataclasses.replace(load_search_space("tiny"), diffusion=diffusion)
    for trial in trials:
        rebuilt = suggest_spec(optuna.trial.FixedTrial(trial.params), space)
        assert rebuilt == MemeSpec.from_json(trial.user_attrs["spec"])
        cost = spec_cost(rebuilt, loaded.config.sampling_steps)
        assert cost.params == trial.user_attrs["params_total"]
        assert cost.trajectory_macs / 1e9 == trial.user_attrs["trajectory_gmacs"]
        assert cost.mean_macs_per_step == trial.user_attrs["macs_per_step"]
        checked = trial_spec(trial, loaded.space, loaded.prior, loaded.config.sampling_steps)
        assert checked.differences == () and checked.spec == rebuilt


def test_export_writes_specs_csv_plots_and_report(real_study: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "export"
    code, stdout, err = cli("export", real_study, "--out", out)
    assert code == 0, err
    loaded = load_study(real_study)
    front = {t.number for t in loaded.study.best_trials}
    files = sorted(out.glob("trial-*.json"))
    assert [f.name for f in files] == [f"trial-{n:05d}.json" for n in sorted(front)]
    for path in files:
        trial = loaded.study.trials[int(path.stem.split("-")[1])]
        exported = load_spec(path)
        assert (exported.to_dict() | {"name": ""}
                == MemeSpec.from_json(trial.user_attrs["spec"]).to_dict() | {"name": ""})
        assert exported.name == f"memekit-trial-{trial.number:05d}"
    csv = pd.read_csv(out / "trials.csv")
    assert sorted(csv["number"]) == [0, 1, 2] and set(csv["state"]) == {"COMPLETE"}
    for name in ("pareto_front.png", "optimization_history.png", "param_importances.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    report = (out / "report.md").read_text()
    # single-large on the tiny space's own backbone: width 1.75 x 16 on the head grid of 8 = 32, LDM-like shares
    large = ExpertSpec(resolution=16, base_width=32, channel_mult=(1, 2), blocks_per_stage=(1, 1),
                       attention_share=(0.0, 1.0), head_dim=8, attention_pool=(2, 1))
    baseline = spec_cost(MemeSpec(experts=(large,), intervals=((0, 1000),), soft_assignment=(1.0,),
                                  out_of_interval="uniform-all"), 50).trajectory_macs
    assert "on this study's backbone (width 32, 2 stages, head_dim 8)" in report
    assert "(val_loss, trajectory_gmacs, minimised)" in report and "preconditioning wiener" in report
    for trial in loaded.study.trials:
        speed_up = baseline / (trial.user_attrs["trajectory_gmacs"] * 1e9)
        row = next(line for line in report.splitlines() if line.startswith(f"| {trial.number} |"))
        assert f"{speed_up:.2f}x" in row and f"{trial.values[0]:.4g}" in row and "COMPLETE" in row
    # the tiny space's share grid {0, 0.5, 1} cannot hold meme-paper's shares: the label says how far it moved
    gap = loaded.study.trials[0].user_attrs["projection_gap"]
    assert gap["share"] > 0
    label = f"meme-paper (projected: share gap {gap['share']:g}"
    assert f"| 0 | {label}" in report
    assert csv.loc[csv["number"] == 0, "warm_start_label"].item().startswith(label)
    assert csv.loc[csv["number"] == 1, "warm_start_label"].isna().all()  # not a warm start: empty
    assert "| MAC ratio vs untrained single-large |" in report and "nothing in this study trains or scores" in report
    assert "equals the recorded spec" in report


def test_exported_spec_is_accepted_by_memekit_train(real_study: Path, tmp_path: Path, cli: Cli) -> None:
    out = tmp_path / "export"
    assert cli("export", real_study, "--out", out, "--top", "1")[0] == 0
    (spec_file,) = out.glob("trial-*.json")
    code, stdout, err = cli("train", spec_file, "--dry-run", "--json", "--images", "32", "--batch", "16")
    assert code == 0, err
    assert json.loads(stdout)["spec"] == load_spec(spec_file).to_dict()


def test_pareto_plot_marks_and_labels_warm_starts(real_study: Path) -> None:
    loaded = load_study(real_study)
    frame = trials_frame(loaded, [0])
    fig = plot_pareto(loaded, frame)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["#0"]
    gap = loaded.study.trials[0].user_attrs["projection_gap"]
    name = f"warm start #0: meme-paper (projected: share gap {gap['share']:g}"
    stars = [c for c in ax.collections if c.get_label().startswith(name)]
    assert len(stars) == 1
    assert [t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith("warm start")] == \
        [stars[0].get_label()]
    trial = loaded.study.trials[0]
    assert stars[0].get_offsets().tolist() == [[trial.values[0], trial.values[1]]]


def test_importance_plot_names_parameters_in_words(tmp_path: Path) -> None:
    fabricate_study(tmp_path / "study", POINTS)
    ax = plot_importances(load_study(tmp_path / "study")).axes[0]
    labels = {t.get_text() for t in ax.get_yticklabels()}
    raw = {name for t in load_study(tmp_path / "study").study.trials for name in t.params}
    assert {param_label(name) for name in raw} == labels
    assert "attention share, expert 0 stage 0" in labels and "length of interval 0 (Dirichlet u)" in labels
    assert not labels & raw


def test_storage_and_study_name_instead_of_study_dir(real_study: Path, tmp_path: Path, cli: Cli) -> None:
    code, stdout, err = cli("export", "--storage", real_study / "study.journal", "--study", "memekit",
                            "--out", tmp_path / "out", "--dry-run")
    assert code == 0, err
    assert json.loads(stdout)["trials"] == [t.number for t in select_trials(load_study(real_study).study)]


# ---- bad input -----------------------------------------------------------------------------------------------
def test_missing_study_dir_is_one_line(tmp_path: Path, cli: Cli) -> None:
    code, _, err = cli("export", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert_one_line_error(code, err, contains="does not exist")
    assert not (tmp_path / "out").exists()


def test_folder_without_study_is_one_line(tmp_path: Path, cli: Cli) -> None:
    code, _, err = cli("export", tmp_path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, contains="search_config.json")


def test_unknown_study_name_is_one_line(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS[:2])
    code, _, err = cli("export", "--storage", tmp_path / "study" / "study.journal", "--study", "nope",
                       "--out", tmp_path / "out")
    assert_one_line_error(code, err, contains="no study named 'nope'")
    code, _, err = cli("export", "--storage", tmp_path / "missing.journal", "--study", "x", "--out", tmp_path / "o")
    assert_one_line_error(code, err, contains="no study journal")
    assert not (tmp_path / "missing.journal").exists()


def test_non_empty_out_needs_overwrite(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", POINTS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = cli("export", tmp_path / "study", "--out", out, "--top", "1")
    assert_one_line_error(code, err, contains="--overwrite")
    assert list(out.iterdir()) == [out / "notes.txt"]
    code, _, err = cli("export", tmp_path / "study", "--out", out, "--top", "2", "--overwrite")
    assert code == 0, err
    assert cli("export", tmp_path / "study", "--out", out, "--top", "1", "--overwrite")[0] == 0
    assert sorted(p.name for p in out.glob("trial-*.json")) == ["trial-00001.json"]  # stale files gone
    assert (out / "notes.txt").read_text() == "keep me"


def test_no_feasible_trial_is_one_line(tmp_path: Path, cli: Cli) -> None:
    fabricate_study(tmp_path / "study", [{"quality": 1.0, "cost": 1.0, "feasible": False}])
    code, _, err = cli("export", tmp_path / "study", "--out", tmp_path / "out")
    assert_one_line_error(code, err, contains="no feasible complete trial")
