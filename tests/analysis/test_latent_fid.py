"""FID / KID of a run trained on latents: its samples are decoded and compared with the image
reference split at the image resolution (Inception replaced by 2 x 2 pooled pixels, see
fid_helpers; every number recomputed here from independently decoded samples)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fid_helpers import pooled_pixels, use_pooled_pixels
from latent_helpers import IMAGE_SIDE, IMAGES, encode_and_train
from PIL import Image
from pytorch_fid.fid_score import calculate_frechet_distance

from memekit.analysis.autoencoders import AutoencoderError
from memekit.analysis.data import load_images, to_uint8
from memekit.analysis.latents import read_latent_header
from memekit.search.metrics import sample_metrics
from memekit.search.sampling import image_grid, load_model, sample_batches


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMEKIT_CACHE", str(tmp_path / "cache"))


def hand_decoded(run, latents, taef2_folder) -> np.ndarray:
    """The run's 4 samples of seed 0 (DDIM-2) decoded by hand: unit-scale samples -> raw latents ->
    the TAEF2-layout decoder in [0, 1] -> uint8."""
    model, spec, _ = load_model(run)
    norm = read_latent_header(latents).normalisation
    x = next(sample_batches(model, spec, 4, steps=2, seed=0, batch=4, progress=False))
    z = x * torch.from_numpy(norm.scale)[:, None, None] + torch.from_numpy(norm.shift)[:, None, None]
    state = torch.load(taef2_folder / "taef2_decoder.pth", weights_only=True)
    from memekit.analysis.taef2 import taef2_decoder

    decoder = taef2_decoder(*(state["1.weight"].shape[1], state["1.weight"].shape[0],
                              state["3.pool.0.weight"].shape[0]))
    decoder.load_state_dict(state)
    with torch.no_grad():
        return to_uint8(decoder(z).clamp(0, 1) * 2 - 1)


def hand_fid(run, latents, taef2_folder) -> float:
    """FID of :func:`hand_decoded`'s images against the image reference split (pooled pixels)."""
    f_gen = pooled_pixels(hand_decoded(run, latents, taef2_folder))
    f_ref = pooled_pixels(load_images(IMAGES, IMAGE_SIDE, split="reference", progress=False))
    return calculate_frechet_distance(f_gen.mean(0), np.cov(f_gen, rowvar=False), f_ref.mean(0),
                                      np.cov(f_ref, rowvar=False))


def test_fid_of_a_latent_run_scores_decoded_images(taef2_folder, tmp_path, monkeypatch) -> None:
    weights = use_pooled_pixels(tmp_path, monkeypatch)
    latents, run = encode_and_train(tmp_path, taef2_folder, steps=1)
    m = sample_metrics(run, IMAGES, n=4, steps=2, batch=4, device="cpu", weights=str(weights), kid_subsets=2)
    assert (m.resolution, m.n, m.n_ref) == (IMAGE_SIDE, 4, 3)  # the image side, the image reference split
    assert m.per_seed[0]["fid"] == pytest.approx(hand_fid(run, latents, taef2_folder), rel=1e-4)
    with pytest.raises(AutoencoderError, match="does not exist"):
        sample_metrics(run, IMAGES, n=4, steps=2, weights=str(weights), autoencoder=str(tmp_path / "nowhere"))


def test_compare_scores_a_latent_run_against_the_images_the_latents_came_from(taef2_folder, tmp_path,
                                                                               monkeypatch) -> None:
    """``memekit compare`` (and fidelity, rerank, a study's sample quality) given latents as data scores
    the decoded samples against the encoded images' reference split, not against the latents."""
    from memekit.search import compare as cmp

    weights = use_pooled_pixels(tmp_path, monkeypatch)
    latents, run = encode_and_train(tmp_path, taef2_folder, steps=1)
    protocol = cmp.Protocol(str(latents), n=4, steps=2, preconditioning=None)
    scored = cmp.score_run(run, protocol, 0, "cpu", str(weights))
    assert (scored["n"], scored["n_ref"]) == (4, 3)
    assert scored["fid"] == pytest.approx(hand_fid(run, latents, taef2_folder), rel=1e-4)
    # its grid shows the decoded images (32 px, so upscaled 3 x), as a hand-decoded grid of the same seed does
    cmp.draw_grid(run, tmp_path / "grid.png", steps=2, device="cpu", n=4, real=(str(latents), tmp_path / "real.png"))
    expected = image_grid(hand_decoded(run, latents, taef2_folder), nrow=8, scale=3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")), expected)
    # beside it, the images the latents were encoded from (all 3 reference images: n = 4 asks for more), same size
    real = image_grid(load_images(IMAGES, IMAGE_SIDE, split="reference", progress=False), nrow=8, scale=3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "real.png").convert("RGB")), real)
