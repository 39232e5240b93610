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


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``max_groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(max_groups, channels), channels, eps=1e-6)


class TimestepEmbedder(nn.Module):
    """t -> sinusoidal features -> 2-layer MLP (SiLU), the embedding every ResBlock reads."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.in_dim))
