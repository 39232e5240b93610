"""Training, sampling and decoding on latents end to end, with randomly initialised tiny
autoencoders (memekit's TAEF2 layout; diffusers' AutoencoderKL when diffusers is installed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error
from latent_helpers import IMAGE_SIDE, encode_and_train, latent_spec, save_tiny_diffusers
from PIL import Image

from memekit.analysis.autoencoders import load_autoencoder
from memekit.analysis.data import to_uint8
from memekit.analysis.latents import load_latents, read_latent_header
from memekit.search.checkpoint import checkpoint_latent, load_checkpoint
from memekit.search.sampling import load_model, sample_batches, sample_checkpoint
from memekit.search.train import TrainConfig, train


@pytest.fixture(params=["taef2", "diffusers-kl"])
def autoencoder(request, tmp_path, taef2_folder):
    return taef2_folder if request.param == "taef2" else save_tiny_diffusers(tmp_path / "kl", "kl")


def decoded(run, autoencoder, n: int) -> np.ndarray:
    """The run's samples decoded by hand: invert the file's normalisation, decode, quantise."""
    model, spec, state = load_model(run)
    header = read_latent_header(json.loads(state["latent"])["path"])
    ae = load_autoencoder(autoencoder)
    x = torch.cat(list(sample_batches(model, spec, n, steps=2, progress=False)))
    z = (x * torch.from_numpy(header.normalisation.scale)[:, None, None]
         + torch.from_numpy(header.normalisation.shift)[:, None, None])
    with torch.no_grad():
        return to_uint8(ae.decode(z))


def test_a_latent_run_trains_records_and_decodes(autoencoder, tmp_path) -> None:
    latents, run = encode_and_train(tmp_path, autoencoder)
    header = read_latent_header(latents)
    state = load_checkpoint(run)
    record = checkpoint_latent(state)
    assert record == json.loads((run / "latents.json").read_text()) == header.record()
    assert record["autoencoder"]["path"] == str(autoencoder.resolve()) and record["resolution"] == IMAGE_SIDE
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4]
    assert np.isfinite([r["val_loss"] for r in log if r["event"] == "validation"]).all()
    grid = np.asarray(Image.open(next((run / "samples").glob("*.png"))))
    factor = header.autoencoder.scale_factor
    assert grid.shape[:2] == (2 + IMAGE_SIDE + 2, 2 * (IMAGE_SIDE + 2) + 2) and header.side * factor == IMAGE_SIDE
    report = sample_checkpoint(run, tmp_path / "s.npz", n=3, steps=2, progress=False)
    images = np.load(report.out)["images"]
    assert report.undecoded is None and images.shape == (3, IMAGE_SIDE, IMAGE_SIDE, 3)
    assert np.array_equal(images, decoded(run, autoencoder, 3))


def test_without_its_autoencoder_a_run_says_so(taef2_folder, tmp_path, cli) -> None:
    latents, run = encode_and_train(tmp_path, taef2_folder, steps=1)
    moved = shutil.move(taef2_folder, tmp_path / "moved")
    code, _, err = cli("sample", run, "--out", tmp_path / "png", "--n", 2, "--steps", 2, "--quiet")
    assert_one_line_error(code, err, contains=f"their autoencoder folder {taef2_folder.resolve()} is not available; "
                                              "pass --autoencoder PATH, or --out FILE.npz")
    code, out, err = cli("sample", run, "--out", tmp_path / "z.npz", "--n", 2, "--steps", 2, "--quiet")
    assert code == 0 and "2 latents, NOT decoded" in out and "is not available" in err
    kept, header = load_latents(tmp_path / "z.npz")
    model, spec, _ = load_model(run)
    assert np.allclose(kept, torch.cat(list(sample_batches(model, spec, 2, steps=2, progress=False))).numpy(),
                       atol=1e-5)
    assert header.autoencoder == read_latent_header(latents).autoencoder  # decodable later
    code, out, err = cli("sample", run, "--out", tmp_path / "png", "--n", 2, "--steps", 2, "--quiet",
                         "--autoencoder", moved)
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "png" / "000001.png")).shape == (IMAGE_SIDE, IMAGE_SIDE, 3)
    # and a trainer without it trains, without sample grids, and says why in the log
    config = TrainConfig(data=str(latents), images=8, batch=8, device="cpu", val_images=4, val_timesteps=2,
                         sample_count=2, sample_steps=2, warmup_images=0)
    train(latent_spec(), config, tmp_path / "run2", progress=False)
    events = [json.loads(line) for line in (tmp_path / "run2" / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "no_sample_grids" and "not available" in e["reason"] for e in events)
    assert not (tmp_path / "run2" / "samples").exists()


def test_spec_and_latents_must_fit(taef2_folder, tmp_path, cli) -> None:
    latents, _ = encode_and_train(tmp_path, taef2_folder, steps=1)
    spec = tmp_path / "rgb.json"
    spec.write_text(latent_spec(channels=3).to_json())
    code, _, err = cli("train", spec, "--data", latents, "--out", tmp_path / "r", "--steps", 1, "--batch", 2)
    assert_one_line_error(code, err, contains="see 3 channel(s) at 4 px but")
    bare = tmp_path / "bare.npz"
    np.savez(bare, latents=np.zeros((4, 4, 4, 4), dtype=np.float32))
    code, _, err = cli("train", "single-small", "--data", bare, "--out", tmp_path / "r", "--steps", 1, "--batch", 2)
    assert_one_line_error(code, err, contains="holds latents without their normalisation")
    spec.write_text(latent_spec().to_json())
    code, out, err = cli("train", spec, "--data", latents, "--dry-run", "--json", "--steps", 1, "--batch", 4,
                         "--sample-steps", 2)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["spec"]["experts"][0]["image_channels"] == 4 and plan["decode_macs_per_image"] > 0
    assert plan["trajectory_macs_with_decode"] == plan["trajectory_macs"] + plan["decode_macs_per_image"]
