"""The TAEF2 layout: a tiny convolutional image autoencoder with 32 latent channels at 1/8 resolution.

The layout of Ollin Boer Bohan's tiny autoencoders (madebyollin/taesd), in the variant distilled
from the FLUX.2 VAE ("TAEF2"); the keys of its two ``state_dict`` files are ``nn.Sequential``
indices, so the modules below are built index by index:

- ``Block(w)``: ``relu(conv(relu(conv(relu(conv(x))))) + x)`` (keys ``conv.0``, ``conv.2``,
  ``conv.4``: 3x3 convolutions with bias); a **[gn]** block first adds a pool branch,
  ``x = x + pool(x)`` with ``pool`` = 1x1 conv ``w -> p`` (no bias), GroupNorm(4, p), ReLU, 1x1
  conv ``p -> w`` (no bias).
- Encoder: ``conv(3, w)``, Block, then three times (3x3 stride-2 conv without bias, three
  Blocks; the last three are [gn]), ``conv(w, C)``. Images in [0, 1], latents raw (C channels).
- Decoder: ``3 tanh(z / 3)``, ``conv(C, w)``, ReLU, three [gn] Blocks, then (nearest x2 upsampling,
  conv without bias, Blocks) with 3, 3 and 1 Blocks, ``conv(w, 3)``; output clamped to [0, 1].

Widths are read from the weights (``w = 64``, ``p = 256``, ``C = 32`` for TAEF2), so random tiny
versions of the same layout serve the tests.
"""

from __future__ import annotations

import torch
from torch import nn

GROUPS = 4  # GroupNorm groups of the pool branch


def _conv(n_in: int, n_out: int, **kwargs: object) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Block(nn.Module):
    """``relu(conv(x) + x)`` after an optional pool branch ``x = x + pool(x)``."""

    def __init__(self, width: int, pool_width: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(),
                                  _conv(width, width))
        self.pool = None
        if pool_width is not None:
            self.pool = nn.Sequential(nn.Conv2d(width, pool_width, 1, bias=False), nn.GroupNorm(GROUPS, pool_width),
                                      nn.ReLU(), nn.Conv2d(pool_width, width, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


class TanhClamp(nn.Module):
    """``3 tanh(z / 3)``: the decoder's soft clamp of its input latents."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(z / 3.0)


def taef2_encoder(latent_channels: int = 32, width: int = 64, pool_width: int = 256) -> nn.Sequential:
    """Images (B, 3, H, W) in [0, 1] -> latents (B, C, H/8, W/8), keys as TAEF2's encoder file."""
    layers: list[nn.Module] = [_conv(3, width), Block(width)]
    for level in range(3):
        gn = pool_width if level == 2 else None
        layers += [_conv(width, width, stride=2, bias=False), *(Block(width, gn) for _ in range(3))]
    layers.append(_conv(width, latent_channels))
    return nn.Sequential(*layers)


def taef2_decoder(latent_channels: int = 32, width: int = 64, pool_width: int = 256) -> nn.Sequential:
    """Latents (B, C, h, w) -> images (B, 3, 8h, 8w) (clamp to [0, 1] after), keys as TAEF2's decoder file."""
    layers: list[nn.Module] = [TanhClamp(), _conv(latent_channels, width), nn.ReLU(),
                               *(Block(width, pool_width) for _ in range(3))]
    for blocks in (3, 3, 1):
        layers += [nn.Upsample(scale_factor=2), _conv(width, width, bias=False), *(Block(width) for _ in range(blocks))]
    layers.append(_conv(width, 3))
    return nn.Sequential(*layers)


def layout_of(encoder_state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """``(latent_channels, width, pool_width)`` read from an encoder state dict of this layout
    (KeyError when a key of the layout is missing)."""
    return (int(encoder_state["14.weight"].shape[0]), int(encoder_state["0.weight"].shape[0]),
            int(encoder_state["11.pool.0.weight"].shape[0]))
