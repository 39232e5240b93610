"""``memekit quickstart --tiny``: every stage runs, the report links only files that exist, and a
rerun resumes instead of redoing (or duplicating) the study."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from optuna.trial import TrialState

from memekit.search.cli import main
from memekit.search.results import load_study
from memekit.space import load_spec


def test_quickstart_tiny_end_to_end_and_resume(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    assert main(["quickstart", str(out), "--tiny"]) == 0
    report = (out / "REPORT.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert {"1-spectrum/snr_heatmap.png", "3-export/pareto_front.png", "5-samples.png"} <= set(links)
    assert all((out / link).is_file() for link in links), [link for link in links if not (out / link).is_file()]
    prior = load_spec(out / "1-spectrum" / "prior_spec.json")
    assert prior.name == "spectral-prior" and prior.n_experts == 2
    exported = sorted((out / "3-export").glob("trial-*.json"))
    assert exported and all(load_spec(p).n_experts == 2 for p in exported)
    assert (out / "4-train" / "checkpoints").is_dir()
    study = load_study(out / "2-study").study
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3
    # the three warm starts ran first, each once
    assert sorted(t.user_attrs.get("warm_start") for t in finished) == ["meme-paper", "multi-same", "prior"]

    # a rerun resumes: no new trials, the same prior, a fresh report
    (out / "REPORT.md").unlink()
    capsys.readouterr()
    assert main(["quickstart", str(out), "--tiny"]) == 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert len(load_study(out / "2-study").study.trials) == len(study.trials)
    assert load_spec(out / "1-spectrum" / "prior_spec.json") == prior
    assert (out / "REPORT.md").is_file()
