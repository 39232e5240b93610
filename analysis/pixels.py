"""Pixels between how data is stored and what the diffusion model sees.

Stored images are uint8 ``(N, H, W, C)``; the model sees float32 ``(N, C, H, W)`` in [-1, 1]
(:func:`to_model_range`, inverted by :func:`to_uint8`); latents are float ``(N, C, H, W)`` at unit
scale already (:func:`to_model_input` passes them through). torch is imported by the functions that
make tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def sample_side(batch: np.ndarray | torch.Tensor) -> int:
    """The side of uint8 ``(N, r, r, C)`` images or of float ``(N, C, r, r)`` model inputs."""
    import torch

    return int(batch.shape[1] if batch.dtype in (np.uint8, torch.uint8) else batch.shape[-1])


def to_model_input(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A batch of :func:`~memekit.analysis.data.load_data`'s output as the model sees it: uint8 images
    -> float32 ``(N, C, H, W)`` in [-1, 1] (:func:`to_model_range`); float latents (already NCHW, unit
    scale) -> float32 unchanged."""
    import torch

    if batch.dtype in (np.uint8, torch.uint8):
        return to_model_range(batch)
    return torch.as_tensor(batch).float()


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1], the range the diffusion model sees."""
    import torch

    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C) (clipped, rounded)."""
    return x.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
