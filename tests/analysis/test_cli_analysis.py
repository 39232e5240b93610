"""``memekit spectrum`` and ``memekit features`` end to end on tiny built-in data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from memekit.search import cli
from memekit.space import DiffusionSpec, ExpertSpec, MemeSpec, load_spec, save_spec


@pytest.fixture(autouse=True)
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMEKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_spec(tmp_path):
    expert = ExpertSpec(resolution=16, base_width=8, channel_mult=(1, 2), blocks_per_stage=(1, 1),
                        attention_share=(0.0, 0.5), head_dim=8, attention_pool=(1, 1))
    spec = MemeSpec(experts=(expert, expert), intervals=((0, 50), (50, 100)), soft_assignment=(0.8, 0.4),
                    diffusion=DiffusionSpec(timesteps=100), name="tiny")
    return save_spec(spec, tmp_path / "tiny.json")


SPECTRUM_FILES = {"summary.csv", "priors.csv", "spectrum.npz", "prior_spec.json", "config.json",
                  "snr_heatmap.png", "power_heatmap.png", "data_power.png", "crossover.png", "band_fractions.png",
                  "prior_report.json", "prior_report.txt"}


def test_spectrum_writes_tables_plots_and_prior_spec(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["spectrum", "builtin:shapes:24", "--resolution", "16", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == SPECTRUM_FILES
    text = capsys.readouterr().out
    assert "uniform boundaries:  [0, 250, 500, 750, 1000]" in text and "proposed boundaries: [0, " in text
    assert "t =    0: f_c" in text
    spec = load_spec(out / "prior_spec.json")
    assert spec.name == "spectral-prior" and spec.n_experts == 4 and spec.experts[0].resolution == 16
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 1000 and np.all(np.diff(summary["crossover_frequency"]) <= 0)
    with np.load(out / "spectrum.npz") as arrays:
        assert arrays["snr"].shape == (1000, 8) and list(arrays["boundaries"]) == list(spec.boundaries)
    for name in SPECTRUM_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spectrum_options_reach_the_prior(tmp_path):
    out = tmp_path / "out"
    argv = ["spectrum", "builtin:shapes:12", "--resolution", "16", "--out", str(out), "--schedule", "cosine",
            "--n-experts", "3", "--limit", "8", "--min-length", "100"]
    assert cli.main(argv) == 0
    spec = load_spec(out / "prior_spec.json")
    assert spec.diffusion.schedule == "cosine" and spec.n_experts == 3
    assert min(hi - lo for lo, hi in spec.intervals) >= 100
    assert json.loads((out / "config.json").read_text())["limit"] == 8


def test_spectrum_refuses_a_non_empty_out_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = ["spectrum", "builtin:shapes:8", "--resolution", "8", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and "--overwrite" in err
    assert cli.main([*argv, "--overwrite"]) == 0
    assert (out / "keep.txt").exists() and (out / "prior_spec.json").exists()


def test_spectrum_dry_run_prints_config_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["spectrum", "builtin:shapes:8", "--out", str(out), "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["n_experts"] == 4 and config["schedule"] == "linear-ldm" and config["min_length"] == 62
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["spectrum", "/no/such/folder", "--resolution", "8"], "does not exist"),
    (["spectrum", "builtin:shapes:8", "--resolution", "8", "--n-experts", "4", "--min-length", "300"],
     "do not fit"),
    (["spectrum", "builtin:shapes:8", "--base", "no-such-preset"], "neither a preset"),
])
def test_spectrum_errors_are_one_line_exit_2(tmp_path, capsys, argv, message):
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("memekit: error:") and message in err


def test_features_on_a_spec_json(tmp_path, tiny_spec, capsys):
    out = tmp_path / "feat"
    argv = ["features", str(tiny_spec), "--data", "builtin:shapes:4", "--out", str(out), "--expert", "1",
            "--t", "0", "99"]
    assert cli.main(argv) == 0
    assert {p.name for p in out.iterdir()} == {"features.csv", "spec.json", "config.json",
                                               "feature_spectra.png", "feature_delta.png"}
    frame = pd.read_csv(out / "features.csv")
    assert set(frame["t"]) == {0, 99} and "mid" in set(frame["layer"])
    assert np.all(frame.loc[frame["layer"] == "input", "delta"] == 0)
    assert load_spec(out / "spec.json").name == "tiny"
    assert "delta log amplitude" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [(["--expert", "2"], "out of range"), (["--t", "100"], "outside"),
                                           (["--layers", "nope"], "no layer 'nope'")])
def test_features_errors(tmp_path, tiny_spec, capsys, extra, message):
    argv = ["features", str(tiny_spec), "--data", "builtin:shapes:2", "--out", str(tmp_path / "f"), *extra]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
