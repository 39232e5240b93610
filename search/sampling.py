"""Sampling images from a model or a checkpoint, and saving them (PNG folder, .npz, grids)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memekit.analysis.data import to_uint8
from memekit.analysis.device import autocast, resolve_device
from memekit.space import Diffusion, MemeSpec, MultiExpert, sample
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write
from memekit.space.progress import progress_bar

from .checkpoint import CheckpointError, checkpoint_spec, load_checkpoint


@torch.no_grad()
def sample_images(model: torch.nn.Module, spec: MemeSpec, n: int, sampler: str = "ddim", steps: int = 50,
                  eta: float = 0.0, seed: int = 0, device: torch.device | str = "cpu", batch: int = 64,
                  mixed_precision: str = "no", progress: bool = True) -> np.ndarray:
    """``n`` images (uint8 NHWC) from ``model``; batch k uses the CPU generator seeded ``seed + k``,
    so the images do not depend on the device."""
    if n < 1 or batch < 1:
        raise MemekitError(f"--n and --batch must be >= 1, got {n} and {batch}")
    model.eval()
    diffusion = Diffusion(spec.diffusion)
    e = spec.experts[0]
    out = []
    n_batches = math.ceil(n / batch)
    device = torch.device(device)
    for k in progress_bar(range(n_batches), progress=progress, desc="sampling", unit="batch"):
        size = min(batch, n - k * batch)
        gen = torch.Generator().manual_seed(seed + k)
        with autocast(device, mixed_precision):
            x = sample(model, diffusion, (size, e.image_channels, e.resolution, e.resolution), sampler=sampler,
                       steps=steps, eta=eta, generator=gen, device=device)
        out.append(to_uint8(x))
    return np.concatenate(out)


def image_grid(images: np.ndarray, nrow: int | None = None, scale: int = 1) -> np.ndarray:
    """uint8 NHWC images -> one uint8 HWC grid with 2 px white gaps; each image upscaled ``scale``
    times by pixel repetition (nearest neighbour: no detail is invented)."""
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + 2) + 2, nrow * (w + 2) + 2, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, nrow)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = img
    return grid


def _save_png(grid: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    image = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_image_grid(images: np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
    """uint8 NHWC images -> one PNG grid (2 px gaps), written atomically."""
    return _save_png(image_grid(images, nrow), path)


def save_comparison_grid(samples: np.ndarray, real: np.ndarray, path: str | Path, scale: int = 4,
                         titles: tuple[str, str] = ("samples", "training images")) -> Path:
    """Two labelled grids side by side (``samples`` left, ``real`` right), each image upscaled
    ``scale`` times (nearest neighbour), as one PNG written atomically."""
    from PIL import Image, ImageDraw

    grids = [image_grid(images, scale=scale) for images in (samples, real)]
    height, label, gap = max(g.shape[0] for g in grids), 16, 12
    canvas = np.full((height + label, grids[0].shape[1] + gap + grids[1].shape[1], 3), 255, dtype=np.uint8)
    x = 0
    for grid in grids:
        canvas[label:label + grid.shape[0], x:x + grid.shape[1]] = grid if grid.shape[-1] == 3 else grid.repeat(3, -1)
        x += grid.shape[1] + gap
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for title, left in zip(titles, (2, grids[0].shape[1] + gap + 2), strict=True):
        draw.text((left, 2), title, fill=(0, 0, 0))
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def save_images(images: np.ndarray, out: str | Path, overwrite: bool = False) -> Path:
    """Write images as ``out.npz`` (key ``images``) or as numbered PNGs in the folder ``out``."""
    from PIL import Image

    out = Path(out)
    if out.suffix == ".npz":
        if out.exists() and not overwrite:
            raise MemekitError(f"{out} exists: choose another --out or pass --overwrite")
        return atomic_write(out, lambda f: np.savez(f, images=images))
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MemekitError(f"{out} is not empty: choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(out / f"{i:06d}.png")
    return out


def load_model(checkpoint: str | Path, use_ema: bool = True, device: torch.device | str = "cpu") -> tuple[MultiExpert, MemeSpec, dict]:
    """Rebuild the MultiExpert of a checkpoint (EMA weights by default)."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    spec = checkpoint_spec(state)
    model = MultiExpert(spec)
    try:
        model.load_state_dict(state["ema" if use_ema else "model"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise CheckpointError(f"checkpoint {state['path']} does not fit the network its spec builds "
                              f"(written by another memekit version?): {first[:160]}") from None
    return model.to(device).eval(), spec, state


def _check_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and out.suffix != ".npz" and not out.is_dir():
        raise MemekitError(f"--out {out} is an existing file: give a folder or a .npz path")
    if out.exists() and not overwrite and (out.suffix == ".npz" or any(out.iterdir())):
        raise MemekitError(f"{out} already exists and is not empty: choose another --out or pass --overwrite")
    return out


def sample_plan(checkpoint: str | Path, out: str | Path, n: int = 64, sampler: str = "ddim", steps: int = 50,
                eta: float = 0.0, seed: int = 0, batch: int = 64, device: str | None = None, use_ema: bool = True,
                mixed_precision: str = "no", overwrite: bool = False) -> dict[str, Any]:
    """What :func:`sample_checkpoint` would do with these arguments (checked, nothing sampled or written)."""
    _check_out(Path(out), overwrite)
    state = load_checkpoint(checkpoint, map_location="cpu")
    spec = checkpoint_spec(state)
    e = spec.experts[0]
    return {"checkpoint": state["path"], "step": int(state["step"]), "weights": "EMA" if use_ema else "raw",
            "spec": spec.name, "image_shape": [e.resolution, e.resolution, e.image_channels], "n": n,
            "sampler": sampler, "steps": steps if sampler == "ddim" else spec.diffusion.timesteps, "eta": eta,
            "seed": seed, "batch": batch, "device": str(resolve_device(device)), "mixed_precision": mixed_precision,
            "out": str(out), "format": "npz" if Path(out).suffix == ".npz" else "png folder"}


@dataclass
class SampleReport:
    out: Path
    n: int
    seconds: float
    images_per_s: float
    checkpoint: str
    step: int


def sample_checkpoint(checkpoint: str | Path, out: str | Path, n: int = 64, sampler: str = "ddim", steps: int = 50,
                      eta: float = 0.0, seed: int = 0, batch: int = 64, device: str | None = None,
                      use_ema: bool = True, mixed_precision: str = "no", overwrite: bool = False,
                      progress: bool = True) -> SampleReport:
    """Sample ``n`` images from a run folder or checkpoint and save them; reports images/s."""
    device = resolve_device(device)
    out = _check_out(Path(out), overwrite)
    model, spec, state = load_model(checkpoint, use_ema=use_ema, device=device)
    start = time.perf_counter()
    images = sample_images(model, spec, n, sampler=sampler, steps=steps, eta=eta, seed=seed, device=device,
                           batch=batch, mixed_precision=mixed_precision, progress=progress)
    seconds = time.perf_counter() - start
    save_images(images, out, overwrite=overwrite)
    return SampleReport(out, n, seconds, n / seconds, state["path"], int(state["step"]))
