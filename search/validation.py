"""The validation loss of a training run: fixed time-steps, fixed noise, held-out images.

:func:`validation_loss` is what every run logs and every study ranks by (``val_loss``), and with the
per-t loss of the best linear denoiser (:func:`linear_reference`, the data's Wiener filter) the
relative loss ``val_rel``. Deterministic: the same model gives the same number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from memekit.analysis.data import sample_side, to_model_input
from memekit.analysis.linear import (
    colour_denoiser_loss,
    linear_denoiser_loss,
    mean_image,
    ring_cross_power,
    ring_power,
)
from memekit.space import Diffusion

VALIDATION_QUARTERS = 4  # the validation loss is also reported per quarter of [0, T)
REFERENCE_IMAGES = 4096  # training images whose spectrum defines the linear reference of val_rel
LOGGED_VALIDATION = ("val_loss", "val_loss_quarters", "val_rel", "val_rel_quarters", "val_rel_per_expert")


def validation_timesteps(timesteps: int, count: int) -> list[int]:
    """The fixed validation grid ``t_k = floor((k + 1/2) T / K)``."""
    return [int((k + 0.5) * timesteps / count) for k in range(count)]


@torch.no_grad()
def validation_loss(model: torch.nn.Module, diffusion: Diffusion, images: torch.Tensor, count: int,
                    batch: int = 256, seed: int = 2_147_483_647, reference: np.ndarray | None = None,
                    intervals: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Mean loss on held-out ``images`` (uint8 NHWC, or unit-scale latents NCHW) at fixed t and fixed noise.

    Returns ``val_loss`` (mean over the grid of :func:`validation_timesteps`) and
    ``val_loss_quarters``, the mean per quarter of [0, T). Deterministic: same model, same number.
    With ``reference`` (the loss of the best linear denoiser at every t, shape (T,), see
    :func:`memekit.analysis.linear.linear_denoiser_loss`) also ``val_rel``: the mean over the grid of
    ``log(loss_t / reference_t)`` (negative: better than the Wiener filter; a 10 % gain counts the
    same at every noise level, and each interval in proportion to its share of the uniform grid, i.e.
    of the DDIM steps), with its quarters and, given ``intervals``, its mean per interval.
    """
    device = images.device
    ts = validation_timesteps(diffusion.timesteps, count)
    per_t = []
    for k, t in enumerate(ts):
        gen = torch.Generator(device="cpu").manual_seed(seed + k)
        total = 0.0
        for start in range(0, len(images), batch):
            x0 = to_model_input(images[start:start + batch])
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t_batch = torch.full((len(x0),), t, device=device, dtype=torch.long)
            total += float(diffusion.loss(model, x0, t_batch, noise).sum())
        per_t.append(total / len(images))
    out = {"val_loss": sum(per_t) / len(per_t), "val_loss_quarters": _quarters(ts, per_t, diffusion.timesteps),
           "val_loss_per_t": per_t, "val_timesteps": ts}
    if reference is not None:
        rel = [math.log(loss / float(reference[t])) for t, loss in zip(ts, per_t, strict=True)]
        out.update(val_rel=sum(rel) / len(rel), val_rel_quarters=_quarters(ts, rel, diffusion.timesteps),
                   val_rel_per_t=rel, val_reference_per_t=[float(reference[t]) for t in ts])
        if intervals is not None:
            out["val_rel_per_expert"] = [_mean([r for t, r in zip(ts, rel, strict=True) if lo <= t < hi])
                                         for lo, hi in intervals]
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _quarters(ts: Sequence[int], values: Sequence[float], timesteps: int) -> list[float]:
    quarters: list[list[float]] = [[] for _ in range(VALIDATION_QUARTERS)]
    for t, value in zip(ts, values, strict=True):
        quarters[t * VALIDATION_QUARTERS // timesteps].append(value)
    return [_mean(q) for q in quarters]


def linear_reference(diffusion: Diffusion, train: np.ndarray, val: np.ndarray,
                     limit: int = REFERENCE_IMAGES) -> np.ndarray:
    """Per-t loss (T,) of the best linear denoiser measured on the training images, on the validation
    images (the reference of ``val_rel``): the colour (affine, channel-mixing) filter for a ``colour``
    run, else the per-channel Wiener filter (what every study before the colour mode used)."""
    if diffusion.spec.preconditioning == "colour":
        mean = mean_image(train[:limit])
        return colour_denoiser_loss(ring_cross_power(train[:limit], mean), sample_side(train), diffusion.alpha_bar,
                                    diffusion.prediction, data_cross=ring_cross_power(val, mean))
    power_train = ring_power(train[:limit])
    return linear_denoiser_loss(power_train, sample_side(train), diffusion.alpha_bar, diffusion.prediction,
                                data_power=ring_power(val))
