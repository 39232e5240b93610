"""FID / KID / LSD of a run's samples over seeds (``memekit.search.metrics.sample_metrics`` and
``memekit fid RUN REFERENCE``), with a stand-in for Inception (2 x 2 pooled pixels, see fid_helpers)
so that the plumbing is checked in milliseconds: every per-seed number is recomputed here from
independently sampled images, reference images and pytorch-fid's Fréchet distance."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fid_helpers import pooled_pixels, use_pooled_pixels
from pytorch_fid.fid_score import calculate_frechet_distance

from memekit.analysis.data import load_images
from memekit.analysis.kid import kid
from memekit.analysis.spectra import log_spectral_distance
from memekit.search import metrics as metrics_module
from memekit.search.checkpoint import save_checkpoint
from memekit.search.metrics import sample_metrics
from memekit.search.sampling import load_model, sample_images
from memekit.space import DiffusionSpec, ExpertSpec, MemeSpec, MultiExpert

REFERENCE = "builtin:shapes:60"  # 5 images in the reference split at 8 px


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMEKIT_CACHE", str(tmp_path / "memekit-cache"))


@pytest.fixture
def fake_inception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_pooled_pixels(tmp_path, monkeypatch)


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """A run folder with one checkpoint of an untrained 8 px, one-expert model (T = 20)."""
    expert = ExpertSpec(image_channels=3, resolution=8, base_width=8, channel_mult=(1,), blocks_per_stage=(1,),
                        attention_share=(0.5,), head_dim=8, attention_pool=(1,))
    spec = MemeSpec(experts=(expert,), intervals=((0, 20),), soft_assignment=(1.0,),
                    diffusion=DiffusionSpec(timesteps=20, schedule="linear-ddpm", prediction="eps"), name="tiny")
    torch.manual_seed(0)
    state = MultiExpert(spec).state_dict()
    save_checkpoint({"spec": spec.to_json(), "model": state, "ema": state, "step": 3}, tmp_path / "run", keep_last=1)
    return tmp_path / "run"


def _expected_per_seed(run: Path, seeds: int) -> list[dict[str, float]]:
    """Each seed's numbers from scratch: samples with seed s * 1_000_003, the reference split read
    by the loader, pooled-pixel features, pytorch-fid's Fréchet distance."""
    model, spec, _ = load_model(run)
    reference = load_images(REFERENCE, 8, split="reference", progress=False)
    f_ref = pooled_pixels(reference)
    out = []
    for s in range(seeds):
        images = sample_images(model, spec, 6, steps=2, seed=s * 1_000_003, batch=4, progress=False)
        f_gen = pooled_pixels(images)
        lsd = log_spectral_distance(images, reference)
        out.append({"fid": calculate_frechet_distance(f_gen.mean(0), np.cov(f_gen, rowvar=False), f_ref.mean(0),
                                                      np.cov(f_ref, rowvar=False)),
                    "kid_mean": kid(f_gen, f_ref, subsets=3)[0], "lsd": lsd.lsd, "lsd_high": lsd.high})
    return out


def test_sample_metrics_over_seeds(tiny_run: Path, fake_inception: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources: list[object] = []
    real_features = metrics_module.features

    def counting_features(source: object, *args: object, **kwargs: object):
        sources.append(source)
        return real_features(source, *args, **kwargs)

    monkeypatch.setattr(metrics_module, "features", counting_features)
    m = sample_metrics(tiny_run, REFERENCE, n=6, steps=2, seeds=2, batch=4, device="cpu", weights=str(fake_inception),
                       kid_subsets=3)
    # the reference once, then one image array per seed
    assert sources[0] == REFERENCE and [isinstance(s, np.ndarray) for s in sources] == [False, True, True]
    assert [s["sampling_seed"] for s in m.per_seed] == [0, 1_000_003]
    for got, expected in zip(m.per_seed, _expected_per_seed(tiny_run, 2), strict=True):
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-9), key
    fids = [s["fid"] for s in m.per_seed]
    assert m.fid_mean == pytest.approx(np.mean(fids)) and m.fid_std == pytest.approx(np.std(fids, ddof=1))
    assert m.per_seed[0]["fid"] != m.per_seed[1]["fid"]  # the seeds sample different images
    assert (m.n, m.n_ref, m.kid_subset_size, m.protocol, m.checkpoint_step, m.resolution) == (
        6, 5, 5, "pytorch-fid", 3, 8)
    assert m.weights_label == f"user file {fake_inception}" and m.notes == ()
    data = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert data["kid_mean"] == pytest.approx(m.kid_mean) and len(data["per_seed"]) == 2
    # one seed at a time (a driver that resumes): repeat 1 alone equals repeat 1 of the pair
    second = sample_metrics(tiny_run, REFERENCE, n=6, steps=2, seeds=1, first_seed=1, batch=4, device="cpu",
                            weights=str(fake_inception), kid_subsets=3)
    assert second.per_seed[0]["sampling_seed"] == 1_000_003
    assert second.per_seed[0]["fid"] == pytest.approx(m.per_seed[1]["fid"], rel=1e-9)


def test_sample_metrics_status_line_per_seed(tiny_run: Path, fake_inception: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With progress asked for, each seed reports on stderr (or to ``say``) when scored (bars are not
    drawn in logs); without it, nothing is printed."""
    sample_metrics(tiny_run, REFERENCE, n=6, steps=2, seeds=1, batch=4, device="cpu", weights=str(fake_inception),
                   kid_subsets=2)
    assert capsys.readouterr().err == ""
    m = sample_metrics(tiny_run, REFERENCE, n=6, steps=2, seeds=2, first_seed=3, batch=4, device="cpu",
                       weights=str(fake_inception), kid_subsets=2, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("seed ")]
    assert [line.split(":")[0] for line in lines] == ["seed 3 (1/2)", "seed 4 (2/2)"]
    for line, seed in zip(lines, m.per_seed, strict=True):
        assert f"FID {seed['fid']:.2f}, KID {seed['kid_mean']:.4f}" in line
    said: list[str] = []  # a caller's say takes the lines instead of stderr
    sample_metrics(tiny_run, REFERENCE, n=6, steps=2, seeds=1, batch=4, device="cpu", weights=str(fake_inception),
                   kid_subsets=2, progress=True, say=said.append)
    assert [line.split(":")[0] for line in said] == ["seed 0 (1/1)"]
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("seed ")]


def test_one_seed_has_no_spread(tiny_run: Path, fake_inception: Path) -> None:
    m = sample_metrics(tiny_run, REFERENCE, n=6, steps=2, batch=4, device="cpu", weights=str(fake_inception),
                       kid_subsets=3)
    assert math.isnan(m.fid_std) and math.isnan(m.kid_std) and m.to_dict()["fid_std"] is None
    assert m.fid_mean == m.per_seed[0]["fid"]
    with pytest.raises(metrics_module.MemekitError, match="--resolution must be 8"):
        sample_metrics(tiny_run, REFERENCE, n=6, resolution=16, weights=str(fake_inception))


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str, str]]:
    """memekit's ``fid`` command: ``cli(*args) -> (exit code, stdout, stderr)``."""
    from memekit.search import cli as cli_module


    def run(*args: object) -> tuple[int, str, str]:
        code = cli_module.main(["fid", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_samples_a_run_over_seeds(tiny_run: Path, fake_inception: Path, tmp_path: Path, cli) -> None:
    code, out, err = cli(tiny_run, REFERENCE, "--n", 6, "--steps", 2, "--seeds", 2, "--sample-batch", 4,
                         "--kid-subsets", 3, "--device", "cpu", "--inception-weights", fake_inception,
                         "--json", tmp_path / "m.json")
    assert code == 0, err
    lines = out.splitlines()
    expected = _expected_per_seed(tiny_run, 2)
    assert lines[0].startswith(f"seed 0 (sampling seed 0): FID {expected[0]['fid']:.3f}, KID ")
    assert lines[1].startswith(f"seed 1 (sampling seed 1000003): FID {expected[1]['fid']:.3f}, KID ")
    fids = [e["fid"] for e in expected]
    where = (f"(n=6 per seed vs 5; 2 DDIM steps; protocol pytorch-fid (bilinear 299); "
             f"weights: user file {fake_inception})")
    assert lines[2] == f"FID {np.mean(fids):.3f} +- {np.std(fids, ddof=1):.3f} over 2 seeds {where}"
    assert lines[3].startswith("KID ") and lines[3].endswith(f"over 2 seeds (3 subsets of 5 per seed; {where[1:]}")
    assert lines[4].startswith("LSD ") and f"against {REFERENCE}" in lines[4]
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["a"] == str(tiny_run) and [s["sampling_seed"] for s in data["per_seed"]] == [0, 1_000_003]
    assert data["lsd_mean"] == pytest.approx(np.mean([e["lsd"] for e in expected]), rel=1e-6)


def test_cli_run_dry_run_and_errors(tiny_run: Path, tmp_path: Path, cli) -> None:
    code, out, err = cli(tiny_run, REFERENCE, "--n", 100, "--seeds", 3, "--dry-run")
    assert code == 0, err
    config = json.loads(out)
    assert (config["mode"], config["split"], config["model_resolution"], config["steps"]) == ("run", "reference", 8, 25)
    assert config["sampling_seeds"] == [0, 1_000_003, 2_000_006] and config["checkpoint"].endswith(".pt")
    for args, message in [((tiny_run, REFERENCE), "needs --n N"),
                          ((tiny_run,), "give the reference set B"),
                          ((tiny_run, REFERENCE, "--n", 5, "--save-stats", tmp_path / "s.npz"), "--save-stats")]:
        code, _, err = cli(*args)
        assert code == 2 and err.count("\n") == 1 and message in err, err
