"""The autoencoder interface: memekit's TAEF2-layout module and diffusers autoencoders, offline,
with random weights (fixtures ``taef2_folder`` and ``save_tiny_diffusers`` in tests/conftest.py)."""

from __future__ import annotations

import builtins

import pytest
import torch
from latent_helpers import TINY_AE, save_tiny_diffusers, save_tiny_taef2

from memekit.analysis import taef2
from memekit.analysis.autoencoders import (
    AutoencoderError,
    autoencoder_macs,
    check_recorded,
    load_autoencoder,
)


def test_taef2_layout_keys_follow_the_readme() -> None:
    """Keys of the layout table (TAEF2 README): Blocks at encoder 1, 3-5, 7-9, 11-13 ([gn] at 11-13),
    stride-2 convolutions without bias at 2, 6, 10; decoder Blocks [gn] at 3-5, up-convolutions
    without bias at 7, 12, 17, output conv at 19."""
    enc = taef2.taef2_encoder(**TINY_AE).state_dict()
    dec = taef2.taef2_decoder(**TINY_AE).state_dict()
    blocks = {int(k.split(".")[0]) for k in enc if ".conv." in k}
    assert blocks == {1, 3, 4, 5, 7, 8, 9, 11, 12, 13}
    assert {int(k.split(".")[0]) for k in enc if ".pool." in k} == {11, 12, 13}
    assert {"2.weight", "6.weight", "10.weight"} <= enc.keys() and "2.bias" not in enc
    assert enc["14.weight"].shape == (4, 8, 3, 3) and enc["11.pool.1.weight"].shape == (16,)
    assert {int(k.split(".")[0]) for k in dec if ".pool." in k} == {3, 4, 5}
    assert {int(k.split(".")[0]) for k in dec if ".conv." in k} == {3, 4, 5, 8, 9, 10, 13, 14, 15, 18}
    assert {"7.weight", "12.weight", "17.weight"} <= dec.keys() and "7.bias" not in dec
    assert dec["1.weight"].shape == (8, 4, 3, 3) and dec["19.weight"].shape == (3, 8, 3, 3)


def test_taef2_folder_encodes_and_decodes(taef2_folder) -> None:
    ae = load_autoencoder(taef2_folder)
    assert (ae.info.kind, ae.info.latent_channels, ae.info.scale_factor) == ("taef2", 4, 8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 4, 4, 4)
    # images in [-1, 1] reach the encoder in [0, 1] (the TAEF2 convention)
    assert torch.allclose(z, ae.encoder(x * 0.5 + 0.5))
    y = ae.decode(z)
    assert y.shape == (2, 3, 32, 32) and y.min() >= -1 and y.max() <= 1
    # the decoder's first step squashes latents with 3 tanh(z / 3): huge latents saturate it
    assert torch.allclose(ae.decoder[0](torch.tensor([1e6, -1e6, 0.0])), torch.tensor([3.0, -3.0, 0.0]))


def test_taef2_macs_match_the_closed_form(taef2_folder) -> None:
    """Encoder MACs of the layout at R px, counted by hand: 3x3 convolutions ``Cin Cout 9 H W`` and
    the 1x1 pool convolutions ``2 w p H W`` of the [gn] blocks."""
    ae = load_autoencoder(taef2_folder)
    w, p, c, r = TINY_AE["width"], TINY_AE["pool_width"], TINY_AE["latent_channels"], 32
    conv = 9 * w * w
    expected = 3 * w * 9 * r**2 + 3 * conv * r**2  # conv(3, w) and Block(w) at R
    for level in (1, 2, 3):
        side2 = (r // 2**level) ** 2
        expected += conv * side2 + 3 * 3 * conv * side2  # stride-2 conv and three Blocks
    expected += 3 * 2 * w * p * (r // 8) ** 2 + 9 * w * c * (r // 8) ** 2  # pool branches, conv(w, C)
    assert autoencoder_macs(ae, r)["encode"] == expected


def test_fingerprint_guards_decoding(taef2_folder, tmp_path) -> None:
    ae = load_autoencoder(taef2_folder)
    other = save_tiny_taef2(tmp_path / "other", seed=1)
    check_recorded(load_autoencoder(taef2_folder), ae.info)  # the same weights pass
    with pytest.raises(AutoencoderError, match="not the one the latents were made with"):
        check_recorded(load_autoencoder(other), ae.info)


def test_folders_that_are_no_autoencoder(tmp_path) -> None:
    with pytest.raises(AutoencoderError, match="does not exist"):
        load_autoencoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutoencoderError, match="neither a TAEF2 weights folder"):
        load_autoencoder(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"0.weight": torch.zeros(1)}, bad / "x_encoder.pth")
    torch.save({}, bad / "x_decoder.pth")
    with pytest.raises(AutoencoderError, match="do not have the TAEF2 layout") as err:
        load_autoencoder(bad)
    assert "\n" not in str(err.value)
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(AutoencoderError, match="AutoencoderKL or AutoencoderTiny"):
        load_autoencoder(unet)


def test_missing_diffusers_names_the_install(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "kl"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):
        if name == "diffusers" or name.startswith("diffusers."):
            raise ImportError("No module named 'diffusers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    with pytest.raises(AutoencoderError, match=r"pip install diffusers"):
        load_autoencoder(folder)


@pytest.mark.parametrize("kind", ["kl", "tiny"])
def test_diffusers_autoencoders_from_a_local_folder(kind, tmp_path) -> None:
    folder = save_tiny_diffusers(tmp_path / kind, kind)
    ae = load_autoencoder(folder)
    assert ae.info.kind == f"diffusers-Autoencoder{'KL' if kind == 'kl' else 'Tiny'}"
    assert (ae.info.latent_channels, ae.info.scale_factor) == (4, 2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 4, 8, 8)
    if kind == "kl":  # deterministic encoding: the posterior mean, as diffusers computes it
        assert torch.allclose(z, ae.model.encode(x).latent_dist.mean)
    y = ae.decode(z)
    assert y.shape == (2, 3, 16, 16) and y.min() >= -1 and y.max() <= 1
