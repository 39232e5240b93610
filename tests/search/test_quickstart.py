"""``memekit quickstart --tiny``: every stage runs, the report links only files that exist, and a
rerun resumes instead of redoing (or duplicating) the study; the resemblance measures against
closed forms; the quickstart's built-in data is flat where dead leaves are textured."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from PIL import Image

from memekit.analysis.data import dead_leaves, few_shapes, load_images
from memekit.search.cli import main
from memekit.search.quickstart import distinct_colours, neighbour_equal_fraction
from memekit.search.results import load_study
from memekit.space import load_spec
from memekit.space.errors import MemekitError


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
    # the status lines name their loss, and the report shows it beside the validation loss
    assert "the status lines' loss is the MSE of the predicted v" in first.out
    assert "The training status lines' loss is the MSE of the predicted v" in report
    # the resemblance stage measured samples and as many training images, and the report shows both
    numbers = json.loads((out / "6-resemblance.json").read_text())
    samples = np.load(out / "5-samples.npz")["images"]
    training = load_images("builtin:few-shapes:128", 16, split="train", limit=len(samples), progress=False)
    assert numbers["equal_training"] == neighbour_equal_fraction(training)
    assert numbers["colours_samples"] == distinct_colours(samples)
    assert f"| {numbers['equal_training']:.3f} | {numbers['equal_samples']:.3f} |" in report
    assert "KID" not in report  # --tiny scores no KID (Inception would dominate its seconds)
    timing = json.loads((out / "timing.json").read_text())
    assert set(timing) == {"spectrum", "search", "export", "train", "sample", "resemblance"}

    (out / "REPORT.md").unlink()
    capsys.readouterr()
    assert main(["quickstart", str(out), "--tiny", "--device", "cpu"]) == 0
    again = capsys.readouterr().out
    assert again.count("(done earlier, skipped)") == 6  # every stage but the report
    assert json.loads((out / "timing.json").read_text()) == timing  # skipped stages keep their first times
    assert "resuming" in again and not re.search(r"^trial \d+ ", again, re.M)  # no trial ran again
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert len(load_study(out / "2-study").study.trials) == len(study.trials)
    assert load_spec(out / "1-spectrum" / "prior_spec.json") == prior
    assert (out / "REPORT.md").is_file()

    # a larger --train-images continues the training and redraws the samples and their measures
    drawn = (out / "5-samples.npz").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["quickstart", str(out), "--tiny", "--device", "cpu", "--train-images", "128"]) == 0
    longer = capsys.readouterr().out
    assert "redrawing them" in longer and longer.count("(done earlier, skipped)") == 3  # spectrum, search, export
    steps = [json.loads(line) for line in (out / "4-train" / "log.jsonl").read_text().splitlines()]
    assert max(r["images_seen"] for r in steps if r.get("event") == "train") == 128  # 64 before, batch 16
    assert (out / "5-samples.npz").stat().st_mtime_ns != drawn and (out / "6-resemblance.json").is_file()
    extended = json.loads((out / "timing.json").read_text())
    assert extended["train"]["wall_s"] > timing["train"]["wall_s"]  # both invocations' training counted
    assert extended["spectrum"] == timing["spectrum"]
    # fewer images than one batch is refused before anything runs
    assert main(["quickstart", str(out), "--tiny", "--device", "cpu", "--train-images", "8"]) == 2
    assert "less than one batch of 16" in capsys.readouterr().err


# ---- the resemblance measures against closed forms ------------------------------------------------------
def test_neighbour_equal_fraction_counts_pairs_within_the_tolerance():
    flat = np.full((2, 4, 4, 3), 100, np.uint8)
    assert neighbour_equal_fraction(flat) == 1.0
    # one vertical edge in a 4 x 4 image: 4 of the 12 horizontal pairs cross it, none of the 12 vertical
    edge = flat[:1].copy()
    edge[:, :, 2:, 1] += 9
    assert neighbour_equal_fraction(edge, tolerance=8) == pytest.approx(20 / 24)
    assert neighbour_equal_fraction(edge, tolerance=9) == 1.0  # the tolerance is inclusive
    checkerboard = ((np.indices((4, 4)).sum(0) % 2) * 255).astype(np.uint8)[None, :, :, None].repeat(3, -1)
    assert neighbour_equal_fraction(checkerboard) == 0.0
    with pytest.raises(MemekitError, match="2 x 2"):
        neighbour_equal_fraction(np.zeros((1, 1, 5, 3), np.uint8))


def test_distinct_colours_counts_quantised_colours_per_image():
    image = np.zeros((1, 2, 2, 3), np.uint8)
    image[0, 0, 0] = (7, 7, 7)  # the same bin as black at 32 levels (bins of 8)
    image[0, 0, 1] = (8, 0, 0)  # another bin in one channel
    image[0, 1, 1] = (0, 0, 255)
    assert distinct_colours(image, levels=32) == 3.0
    assert distinct_colours(image, levels=256) == 4.0
    flat = np.full((1, 2, 2, 3), 200, np.uint8)
    assert distinct_colours(np.concatenate([image, flat]), levels=256) == (4 + 1) / 2  # the mean over images


# ---- the quickstart's built-in data -------------------------------------------------------------------
def test_few_shapes_is_deterministic_flat_and_reads_as_a_builtin_source():
    images = few_shapes(6, 16)
    np.testing.assert_array_equal(images, few_shapes(6, 16))
    np.testing.assert_array_equal(few_shapes(3, 16), images[:3])  # image i does not depend on n
    np.testing.assert_array_equal(load_images("builtin:few-shapes:6", 16, use_cache=False), images)
    assert load_images("builtin:few-shapes", 8, limit=2, use_cache=False).shape == (2, 8, 8, 3)
    # large flat shapes on a flat background against the texture of many small dead leaves
    many = few_shapes(64, 16)
    assert neighbour_equal_fraction(many) > 0.7 > 0.5 > neighbour_equal_fraction(dead_leaves(64, 16))
    assert distinct_colours(many) < 20 < 60 < distinct_colours(dead_leaves(64, 16))
