"""``memekit encode``: images -> a latent file, resumable chunk by chunk, and what spectrum makes of
it (memekit.analysis.encoding, memekit.search.cli.encode)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from memekit.analysis import encoding
from memekit.analysis.data import load_images
from memekit.analysis.encoding import EncodeJob, run_encode, selected_keys
from memekit.analysis.latents import LatentError, load_latents, read_latent_header
from memekit.analysis.reports import read_profile
from memekit.analysis.spectra import rapsd
from memekit.search.cli import main as cli_main

SOURCE = "builtin:shapes:40"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMEKIT_CACHE", str(tmp_path / "cache"))


def is_reference(keys) -> np.ndarray:
    return np.array([zlib.crc32(k.encode()) % 10 == 0 for k in keys])


def test_encode_matches_the_autoencoder_and_measures_the_train_split(taef2_folder, tmp_path) -> None:
    report = run_encode(EncodeJob(SOURCE, str(taef2_folder), str(tmp_path / "z.npz"), resolution=32, chunk_size=16,
                                  batch_size=8), progress=False)
    assert (report.count, report.shape, report.chunks_resumed) == (40, (4, 4, 4), 0)
    header = read_latent_header(report.out)
    raw, _ = load_latents(report.out, normalised=False)
    # the same latents straight from the module: images in [0, 1], the layout's encoder
    state = torch.load(taef2_folder / "taef2_encoder.pth", weights_only=True)
    from memekit.analysis.taef2 import layout_of, taef2_encoder

    encoder = taef2_encoder(*layout_of(state))
    encoder.load_state_dict(state)
    images = torch.from_numpy(load_images(SOURCE, 32, progress=False)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert np.allclose(raw, encoder(images).numpy(), atol=1e-5)
    train = raw[~is_reference([str(i) for i in range(40)])]
    assert np.allclose(header.normalisation.shift, train.mean(axis=(0, 2, 3)), atol=1e-5)
    assert np.allclose(header.normalisation.scale, train.std(axis=(0, 2, 3)), rtol=1e-5)
    assert header.resolution == 32 and header.source == SOURCE and header.autoencoder.kind == "taef2"
    assert header.meta["normalisation"]["measured_on"].startswith(f"train split ({len(train)} latents)")
    assert not (tmp_path / "z.npz.parts").exists()


def test_an_interrupted_encoding_resumes(taef2_folder, tmp_path, monkeypatch) -> None:
    job = EncodeJob(SOURCE, str(taef2_folder), str(tmp_path / "z.npz"), resolution=32, chunk_size=16)
    straight = run_encode(EncodeJob(SOURCE, str(taef2_folder), str(tmp_path / "ref.npz"), resolution=32,
                                    chunk_size=16), progress=False)
    real, calls = encoding.encode_images, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(encoding, "encode_images", fail_second)
    with pytest.raises(KeyboardInterrupt):
        run_encode(job, progress=False)
    assert sorted(p.name for p in job.parts.iterdir()) == ["chunk-00000.npz", "plan.json"]
    with pytest.raises(LatentError, match="holds chunks of another encoding \\(chunk_size differs\\)"):
        run_encode(EncodeJob(SOURCE, str(taef2_folder), job.out, resolution=32, chunk_size=8), progress=False)
    report = run_encode(job, progress=False)
    assert report.chunks_resumed == 1 and len(calls) == 4  # 1 done, 1 failed, then chunks 1 and 2
    assert np.array_equal(load_latents(report.out, normalised=False)[0],
                          load_latents(straight.out, normalised=False)[0])


def test_limit_keeps_the_first_of_each_split() -> None:
    keys = [f"{i:04d}.jpg" for i in range(300)]
    ref = is_reference(keys)
    kept = selected_keys(keys, 5)
    expected = [k for i, k in enumerate(keys) if (ref[i] and ref[:i + 1].sum() <= 5) or (not ref[i] and
                                                                                       (~ref[:i + 1]).sum() <= 5)]
    assert kept == expected and is_reference(kept).sum() == 5 and len(kept) == 10


def test_cli_encode_then_spectrum_per_channel(taef2_folder, tmp_path, capsys) -> None:
    out = tmp_path / "z.npz"
    args = ["encode", SOURCE, "--autoencoder", str(taef2_folder), "--out", str(out), "--resolution", "64",
            "--chunk", "16", "--quiet"]
    assert cli_main([*args, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["images"], plan["latent_shape"], plan["chunks"], plan["chunks_done"]) == (40, [4, 8, 8], 3, 0)
    assert plan["macs_per_image"]["encode"] > 0 and not out.exists()
    assert cli_main(args) == 0
    assert "encoded 40 images at 64 px into 4 x 8 x 8 latents" in capsys.readouterr().out
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists: choose another --out or pass --overwrite" in err
    assert cli_main(["spectrum", str(out), "--out", str(tmp_path / "spec"), "--n-experts", "2", "--base",
                     "single-small"]) == 0
    text = capsys.readouterr().out
    assert "40 latents of 4 channels at 8 x 8" in text and "per-channel crossover" in text
    spec = json.loads((tmp_path / "spec" / "prior_spec.json").read_text())
    assert (spec["experts"][0]["image_channels"], spec["experts"][0]["resolution"]) == (4, 8)
    saved = np.load(tmp_path / "spec" / "spectrum.npz")
    latents, _ = load_latents(out)
    # per channel: the numpy reference RAPSD averaged over latents; the profile's P_0 is their mean
    assert np.allclose(saved["channel_power"], rapsd(latents).mean(axis=0), rtol=1e-5)
    assert np.allclose(saved["data_power"], saved["channel_power"].mean(axis=0), rtol=1e-9)
    profile = read_profile(tmp_path / "spec")
    assert (profile.resolution, profile.n_images) == (8, 40) and np.array_equal(profile.channel_power,
                                                                                 saved["channel_power"])
    assert {"channel_power.csv", "channel_crossover.csv", "channel_power.png"} <= {
        p.name for p in (tmp_path / "spec").iterdir()}
