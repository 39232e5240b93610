"""Tiny autoencoders for the latent-space tests (not a test module): memekit's TAEF2 layout and
diffusers autoencoders, randomly initialised and saved to a folder as their real weights are."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_AE = {"latent_channels": 4, "width": 8, "pool_width": 16}  # the TAEF2 layout at 1/8 of its widths


def save_tiny_taef2(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised TAEF2-layout autoencoder (4 latent channels, width 8) saved as TAEF2's
    two state-dict files in ``folder``."""
    from memekit.analysis import taef2

    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(taef2.taef2_encoder(**TINY_AE).state_dict(), folder / "taef2_encoder.pth")
    torch.save(taef2.taef2_decoder(**TINY_AE).state_dict(), folder / "taef2_decoder.pth")
    return folder


def save_tiny_diffusers(folder: Path, kind: str) -> Path:
    """A randomly initialised diffusers AutoencoderKL (``kind="kl"``) or AutoencoderTiny (``"tiny"``)
    with 4 latent channels at 1/2 resolution, saved with ``save_pretrained`` into ``folder`` (the
    pattern of diffusers' own model tests); skips the test when diffusers is not installed."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    if kind == "kl":
        model = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
            latent_channels=4, norm_num_groups=4, sample_size=16)
    else:
        model = diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                          num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)
    model.save_pretrained(folder)
    return folder


IMAGES = "builtin:shapes:40"  # 37 train and 3 reference images
IMAGE_SIDE = 32


def latent_spec(channels: int = 4, side: int = 4, timesteps: int = 20):
    """Two tiny one-stage experts that see ``channels`` x ``side`` x ``side`` latents."""
    from memekit.space import DiffusionSpec, ExpertSpec, MemeSpec

    expert = ExpertSpec(image_channels=channels, resolution=side, base_width=8, channel_mult=(1,),
                        blocks_per_stage=(1,), attention_share=(0.5,), head_dim=8, attention_pool=(1,))
    return MemeSpec(experts=(expert, expert), intervals=((0, timesteps // 2), (timesteps // 2, timesteps)),
                    soft_assignment=(0.8, 0.5), diffusion=DiffusionSpec(timesteps=timesteps, schedule="linear-ddpm"),
                    name="tiny-latent")


def encode_and_train(tmp_path: Path, autoencoder: Path, steps: int = 4) -> tuple[Path, Path]:
    """``IMAGES`` encoded at ``IMAGE_SIDE`` px by ``autoencoder`` into ``tmp_path/latents.npz``, and a
    run of :func:`latent_spec` trained on them for ``steps`` steps in ``tmp_path/run`` (sample grid of
    2 images at the end)."""
    from memekit.analysis.encoding import EncodeJob, run_encode
    from memekit.analysis.latents import read_latent_header
    from memekit.search.train import TrainConfig, train

    latents = run_encode(EncodeJob(IMAGES, str(autoencoder), str(tmp_path / "latents.npz"), resolution=IMAGE_SIDE),
                         progress=False).out
    channels, side, _ = read_latent_header(latents).shape
    config = TrainConfig(data=str(latents), images=8 * steps, batch=8, lr=1e-3, warmup_images=0, device="cpu",
                         log_every=1, val_every=0, val_images=4, val_timesteps=2, sample_every=0, sample_count=2,
                         sample_steps=2, checkpoint_every=0)
    train(latent_spec(channels, side), config, tmp_path / "run", progress=False)
    return latents, tmp_path / "run"
