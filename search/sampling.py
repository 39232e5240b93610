"""Sampling images from a model or a checkpoint, and saving them (PNG folder, .npz, grids).

A model trained on latents (its checkpoint holds the ``latent`` record of its data,
:meth:`memekit.analysis.latents.LatentHeader.record`) samples latents, which are decoded into images by
the autoencoder the run recorded (or the one given as ``autoencoder``, which must have the same
weights). When it is not available, :func:`sample_checkpoint` says so: into an ``.npz`` it writes the
undecoded latents as a latent file (decodable later), into a PNG folder it refuses in one line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memekit.analysis.autoencoders import AutoencoderError
from memekit.analysis.data import to_uint8
from memekit.analysis.device import autocast, resolve_device
from memekit.analysis.latents import (
    LatentDecoder,
    latent_decoder,
    normalisation_from_record,
    write_latents,
)
from memekit.space import Diffusion, MemeSpec, MultiExpert, sample
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write
from memekit.space.progress import progress_bar

from .checkpoint import CheckpointError, checkpoint_latent, checkpoint_spec, load_checkpoint


@torch.no_grad()
def sample_batches(model: torch.nn.Module, spec: MemeSpec, n: int, sampler: str = "ddim", steps: int = 50,
                   eta: float = 0.0, seed: int = 0, device: torch.device | str = "cpu", batch: int = 64,
                   mixed_precision: str = "no", progress: bool = True) -> Iterator[torch.Tensor]:
    """``n`` samples of ``model`` in the space it models (images in [-1, 1] or unit-scale latents),
    float ``(b, C, r, r)`` batches; batch k uses the CPU generator seeded ``seed + k``, so the samples
    do not depend on the device."""
    if n < 1 or batch < 1:
        raise MemekitError(f"--n and --batch must be >= 1, got {n} and {batch}")
    model.eval()
    diffusion = Diffusion(spec.diffusion)
    e = spec.experts[0]
    device = torch.device(device)
    for k in progress_bar(range(math.ceil(n / batch)), progress=progress, desc="sampling", unit="batch"):
        size = min(batch, n - k * batch)
        gen = torch.Generator().manual_seed(seed + k)
        with autocast(device, mixed_precision):
            yield sample(model, diffusion, (size, e.image_channels, e.resolution, e.resolution), sampler=sampler,
                         steps=steps, eta=eta, generator=gen, device=device)


def sample_images(model: torch.nn.Module, spec: MemeSpec, n: int, sampler: str = "ddim", steps: int = 50,
                  eta: float = 0.0, seed: int = 0, device: torch.device | str = "cpu", batch: int = 64,
                  mixed_precision: str = "no", progress: bool = True,
                  decoder: LatentDecoder | None = None) -> np.ndarray:
    """``n`` images (uint8 NHWC) from ``model`` (:func:`sample_batches`); a latent model's samples are
    decoded by ``decoder`` (:func:`memekit.analysis.latents.latent_decoder`)."""
    channels = spec.experts[0].image_channels
    if decoder is None and channels not in (1, 3):
        raise MemekitError(f"the model samples {channels}-channel latents: images need their autoencoder "
                           "(a LatentDecoder)")
    batches = sample_batches(model, spec, n, sampler, steps, eta, seed, device, batch, mixed_precision, progress)
    return np.concatenate([decoder(x) if decoder is not None else to_uint8(x) for x in batches])


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


def load_model(checkpoint: str | Path, use_ema: bool = True,
               device: torch.device | str = "cpu") -> tuple[MultiExpert, MemeSpec, dict]:
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


def run_decoder(state: dict[str, Any], autoencoder: str | Path | None = None,
                device: torch.device | str = "cpu") -> LatentDecoder | None:
    """The decoder of the run whose checkpoint is ``state`` (its recorded autoencoder, or the folder
    ``autoencoder``); None for a pixel run; a one-line error when the autoencoder is not available."""
    record = checkpoint_latent(state)
    return latent_decoder(record, autoencoder, device) if record is not None else None


def _decoder_or_reason(record: dict[str, Any] | None, autoencoder: str | None,
                       device: torch.device) -> tuple[LatentDecoder | None, str | None]:
    """The decoder of a latent run (None, None for a pixel run), or None and why it is not available."""
    if record is None:
        return None, None
    try:
        return latent_decoder(record, autoencoder, device), None
    except AutoencoderError as err:
        return None, str(err)


def sample_plan(checkpoint: str | Path, out: str | Path, n: int = 64, sampler: str = "ddim", steps: int = 50,
                eta: float = 0.0, seed: int = 0, batch: int = 64, device: str | None = None, use_ema: bool = True,
                mixed_precision: str = "no", overwrite: bool = False, autoencoder: str | None = None) -> dict[str, Any]:
    """What :func:`sample_checkpoint` would do with these arguments (checked, nothing sampled or written)."""
    _check_out(Path(out), overwrite)
    state = load_checkpoint(checkpoint, map_location="cpu")
    spec = checkpoint_spec(state)
    e = spec.experts[0]
    plan = {"checkpoint": state["path"], "step": int(state["step"]), "weights": "EMA" if use_ema else "raw",
            "spec": spec.name, "image_shape": [e.resolution, e.resolution, e.image_channels], "n": n,
            "sampler": sampler, "steps": steps if sampler == "ddim" else spec.diffusion.timesteps, "eta": eta,
            "seed": seed, "batch": batch, "device": str(resolve_device(device)), "mixed_precision": mixed_precision,
            "out": str(out), "format": "npz" if Path(out).suffix == ".npz" else "png folder"}
    record = checkpoint_latent(state)
    if record is not None:
        decoder, reason = _decoder_or_reason(record, autoencoder, torch.device("cpu"))
        side = record.get("resolution")
        plan.update(latent_shape=[e.image_channels, e.resolution, e.resolution],
                    image_shape=[side, side, 3] if decoder is not None else None,
                    autoencoder=str(decoder.autoencoder.info.path) if decoder is not None else None,
                    decoding="decoded to images" if decoder is not None else f"not decoded: {reason}")
    return plan


@dataclass
class SampleReport:
    out: Path
    n: int
    seconds: float
    images_per_s: float
    checkpoint: str
    step: int
    undecoded: str | None = None  # a latent run whose autoencoder was not available: why (latents written)


def sample_checkpoint(checkpoint: str | Path, out: str | Path, n: int = 64, sampler: str = "ddim", steps: int = 50,
                      eta: float = 0.0, seed: int = 0, batch: int = 64, device: str | None = None,
                      use_ema: bool = True, mixed_precision: str = "no", overwrite: bool = False,
                      progress: bool = True, autoencoder: str | None = None) -> SampleReport:
    """Sample ``n`` images from a run folder or checkpoint and save them; reports images/s. A latent
    run's samples are decoded (module docstring); ``autoencoder`` replaces the folder it recorded."""
    device = resolve_device(device)
    out = _check_out(Path(out), overwrite)
    model, spec, state = load_model(checkpoint, use_ema=use_ema, device=device)
    record = checkpoint_latent(state)
    decoder, reason = _decoder_or_reason(record, autoencoder, device)
    if reason is not None and out.suffix != ".npz":
        raise AutoencoderError(f"{reason}; pass --autoencoder PATH, or --out FILE.npz to keep the undecoded latents")
    start = time.perf_counter()
    options = dict(sampler=sampler, steps=steps, eta=eta, seed=seed, device=device, batch=batch,
                   mixed_precision=mixed_precision, progress=progress)
    if reason is not None:
        latents = torch.cat([x.float().cpu() for x in sample_batches(model, spec, n, **options)])
        normalisation = normalisation_from_record(record)
        write_latents(out, normalisation.invert(latents).numpy(), [str(i) for i in range(n)], normalisation,
                      {"autoencoder": record.get("autoencoder"), "resolution": record.get("resolution"),
                       "samples_of": state["path"], "normalisation": {"mode": normalisation.mode}})
    else:
        save_images(sample_images(model, spec, n, decoder=decoder, **options), out, overwrite=overwrite)
    seconds = time.perf_counter() - start
    return SampleReport(out, n, seconds, n / seconds, state["path"], int(state["step"]), reason)
