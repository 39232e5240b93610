"""Primitives shared by every memekit network: time-step embedding, normalisation."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) time-steps, as in DDPM / "Attention is all
    you need": ``[cos(t * w_k), sin(t * w_k)]`` with ``w_k = max_period^(-k / (dim/2))``.

    t: (B,) -> (B, dim). An odd ``dim`` gets one zero column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def norm_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """The largest group count <= ``max_groups`` that divides ``channels`` with at least
    ``min_group_size`` channels per group (1 group when ``channels < min_group_size``).

    At least a few channels per group keep GroupNorm from turning into an instance norm, which
    would erase any per-channel constant added before it (such as a time embedding)."""
    limit = min(max_groups, max(channels // min_group_size, 1))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm over :func:`norm_groups` groups."""
    return nn.GroupNorm(norm_groups(channels, max_groups), channels, eps=1e-6)


class TimestepEmbedder(nn.Module):
    """t -> sinusoidal features -> 2-layer MLP (SiLU), the embedding every ResBlock reads."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.in_dim).to(self.mlp[0].weight.dtype))
