"""Latent data sets: the file format, the normalisation and its inverse, splits, the loader and
its one-line errors (memekit.analysis.latents, memekit.analysis.data)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from memekit.analysis.data import (
    DataError,
    check_data_for_spec,
    data_shape,
    load_data,
    load_images,
    spec_for_data,
    to_model_input,
)
from memekit.analysis.latents import (
    LatentError,
    load_latents,
    measure_normalisation,
    read_latent_header,
    write_latents,
)
from memekit.space import get_preset


def raw_latents(n: int = 40, channels: int = 4, side: int = 8, seed: int = 0) -> np.ndarray:
    """Latents whose channel c has mean c - 1 and standard deviation c + 1 (independent draws)."""
    rng = np.random.default_rng(seed)
    c = np.arange(channels, dtype=np.float64)[None, :, None, None]
    return (c - 1 + (c + 1) * rng.standard_normal((n, channels, side, side))).astype(np.float32)


@pytest.fixture
def latent_file(tmp_path):
    z = raw_latents()
    keys = [f"img{i:03d}.png" for i in range(len(z))]
    path = tmp_path / "latents.npz"
    write_latents(path, z, keys, measure_normalisation(z), {"resolution": 32, "source": "somewhere"})
    return path, z, keys


def test_normalisation_round_trip_and_unit_scale() -> None:
    z = raw_latents()
    norm = measure_normalisation(z, "channel")
    x = norm.apply(z)
    assert np.allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5) and np.allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-5)
    assert np.allclose(norm.invert(x), z, atol=1e-5)
    assert torch.allclose(norm.invert(torch.from_numpy(x)), torch.from_numpy(z), atol=1e-5)  # torch as numpy
    # global: one mean and one std, so the channels keep their relative power (std ratio (c + 1) / 1)
    g = measure_normalisation(z, "global")
    assert np.ptp(g.scale) == 0 and np.ptp(g.shift) == 0
    assert np.allclose(g.scale[0], z.std(), rtol=1e-5) and np.allclose(g.shift[0], z.mean(), atol=1e-5)
    ratios = g.apply(z).std(axis=(0, 2, 3)) / g.apply(z)[:, 0].std()
    assert np.allclose(ratios, z.std(axis=(0, 2, 3)) / z[:, 0].std(), rtol=1e-5)
    with pytest.raises(LatentError, match="choose one of channel, global"):
        measure_normalisation(z, "minmax")


def test_file_round_trip_and_splits_by_image_key(latent_file) -> None:
    path, z, keys = latent_file
    header = read_latent_header(path)
    assert (header.count, header.shape, header.channels, header.side, header.resolution) == (40, (4, 8, 8), 4, 8, 32)
    raw, _ = load_latents(path, normalised=False)
    assert np.array_equal(raw, z)
    reference = np.array([zlib.crc32(k.encode()) % 10 == 0 for k in keys])
    assert 0 < reference.sum() < len(keys)
    ref, _ = load_latents(path, "reference", normalised=False)
    train, _ = load_latents(path, "train", limit=3, normalised=False)
    assert np.array_equal(ref, z[reference]) and np.array_equal(train, z[~reference][:3])
    x = load_data(str(path), 8, split="train")
    assert x.dtype == np.float32 and np.allclose(x, header.normalisation.apply(z[~reference]), atol=1e-6)
    assert to_model_input(x[:2]).dtype == torch.float32 and torch.equal(to_model_input(x[:2]), torch.from_numpy(x[:2]))
    assert data_shape(str(path)) == (4, 8, True) and data_shape("builtin:shapes:8") == (3, None, False)


def test_latents_without_normalisation_are_refused(tmp_path) -> None:
    path = tmp_path / "bare.npz"
    np.savez(path, latents=raw_latents())
    with pytest.raises(LatentError, match="without their normalisation") as err:
        load_data(str(path), 8)
    assert "\n" not in str(err.value) and "memekit encode" in str(err.value)
    np.savez(path, latents=raw_latents(), shift=np.zeros(3), scale=np.ones(3))
    with pytest.raises(LatentError, match="one finite number per channel"):
        read_latent_header(path)
    with pytest.raises(DataError, match="is a latent data set: this step needs images"):
        np.savez(path, latents=raw_latents(), shift=np.zeros(4), scale=np.ones(4))
        load_images(str(path), 8)


def test_spec_and_data_must_agree(latent_file) -> None:
    path = str(latent_file[0])
    with pytest.raises(DataError, match="see 3 channel.* holds 4 x 8 x 8 latents: use a spec with image_channels 4"):
        check_data_for_spec(path, 3, 8)
    with pytest.raises(DataError, match="see 4 channel.* holds RGB images"):
        check_data_for_spec("builtin:shapes:8", 4, 8)
    with pytest.raises(DataError, match="not 16 px data: use resolution 8"):
        load_data(path, 16)
    spec = spec_for_data("single-small", path)  # a preset is built for the latents
    assert (spec.experts[0].image_channels, spec.experts[0].resolution) == (4, 8)
    with pytest.raises(DataError, match="--resolution must be 8"):
        spec_for_data("single-small", path, 32)
    assert spec_for_data("single-small", "builtin:shapes:8") == get_preset("single-small", 32)
