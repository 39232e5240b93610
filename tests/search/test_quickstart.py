"""``memekit quickstart --tiny``: every stage runs, the report links only files that exist, and a
rerun resumes instead of redoing (or duplicating) the study."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from optuna.trial import TrialState
from PIL import Image

from memekit.search.cli import main
from memekit.search.results import load_study
from memekit.space import load_spec


def test_quickstart_tiny_end_to_end_and_resume(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    capsys.readouterr()
    assert main(["quickstart", str(out), "--tiny", "--device", "cpu"]) == 0
    first = capsys.readouterr()
    assert "\r" not in first.out + first.err  # no progress bars in captured (non-terminal) output
    assert len(re.findall(r"^trial \d+ complete.*; \d/3 finished$", first.out, re.M)) == 3  # one line per trial
    assert "done earlier" not in first.out
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
    # the report says what the prior is and where it ranked among the finished trials
    ranked = sorted(finished, key=lambda t: t.values[0])
    prior_trial = next(t for t in finished if t.user_attrs.get("warm_start") == "prior")
    assert "The spectral prior is memekit's starting configuration" in report
    assert f"val_loss {prior_trial.values[0]:.4f} (rank {ranked.index(prior_trial) + 1} of 3" in report

    # a rerun resumes: no new trials, the same prior, a fresh report
    # the samples sit beside as many training images, both upscaled 4x, with a caption
    side = 2 * (4 * 16 + 2) + 2  # a 2 x 2 grid of 16 px images upscaled 4x, with 2 px gaps
    assert Image.open(out / "5-samples.png").size == (2 * side + 12, side + 16)  # two grids, 12 px apart, titles
    assert "training images" in report and "upscaled 4x" in report

    (out / "REPORT.md").unlink()
    capsys.readouterr()
    assert main(["quickstart", str(out), "--tiny", "--device", "cpu"]) == 0
    again = capsys.readouterr().out
    assert again.count("(done earlier, skipped)") == 5  # every stage but the report
    assert "resuming" in again and not re.search(r"^trial \d+ ", again, re.M)  # no trial ran again
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert len(load_study(out / "2-study").study.trials) == len(study.trials)
    assert load_spec(out / "1-spectrum" / "prior_spec.json") == prior
    assert (out / "REPORT.md").is_file()
