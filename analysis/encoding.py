"""Encoding an image data set into a latent file, once, resumably (``memekit encode``).

:class:`EncodeJob` (:mod:`memekit.analysis.encode_job`, torch-free) says what to encode;
:func:`encode_plan` resolves it (counts, latent shape, the autoencoder's cost, chunks already done)
without encoding anything; :func:`run_encode` encodes.

Resuming: the images (in source order, at most ``limit`` per split) are cut into chunks of
``chunk_size``; each chunk is encoded and written atomically to ``OUT.parts/chunk-NNNNN.npz`` next to
a ``plan.json`` that records what the chunks belong to (source fingerprint, autoencoder fingerprint,
resolution, chunk size, the keys). A rerun with the same settings skips the chunks on disk; other
settings are refused in one line. When every chunk is there, the normalisation is measured on the
train split, ``OUT`` is written atomically (:func:`memekit.analysis.latents.write_latents`) and
``OUT.parts`` is removed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memekit.space.files import atomic_write, atomic_write_json
from memekit.space.progress import progress_bar

from .autoencoders import Autoencoder, autoencoder_macs, load_autoencoder
from .data import read_images, reference_mask, source_fingerprint, source_keys, to_model_range
from .device import device_name, resolve_device
from .encode_job import EncodeJob
from .latents import LatentError, measure_normalisation, write_latents

PLAN_FILE = "plan.json"


def selected_keys(keys: list[str], limit: int | None) -> list[str]:
    """``keys`` in order, keeping at most the first ``limit`` of each split (train and reference)."""
    if limit is None:
        return list(keys)
    mask = reference_mask(keys)
    ref_rank, train_rank = np.cumsum(mask), np.cumsum(~mask)
    return [k for k, m, r, t in zip(keys, mask, ref_rank, train_rank, strict=True) if (r if m else t) <= limit]


def _chunk_path(parts: Path, index: int) -> Path:
    return parts / f"chunk-{index:05d}.npz"


def _plan_record(job: EncodeJob, model: Autoencoder, keys: list[str]) -> dict[str, Any]:
    """What the chunks of ``job`` belong to (compared on resume)."""
    return {"data": job.data, "source_fingerprint": source_fingerprint(job.data),
            "autoencoder_fingerprint": model.info.fingerprint, "resolution": job.resolution,
            "chunk_size": job.chunk_size, "count": len(keys),
            "keys_sha1": hashlib.sha1("\n".join(keys).encode()).hexdigest()}


def _check(job: EncodeJob, model: Autoencoder) -> None:
    if Path(job.out).exists() and not job.overwrite:
        raise LatentError(f"{job.out} exists: choose another --out or pass --overwrite")
    factor = model.info.scale_factor
    if job.resolution % factor:
        raise LatentError(f"resolution {job.resolution} is not a multiple of the autoencoder's downsampling "
                          f"factor {factor}: use a multiple of {factor}")


def _resume_state(job: EncodeJob, plan: dict[str, Any]) -> list[int]:
    """Chunks already on disk for this plan; a one-line error when ``OUT.parts`` belongs to another."""
    path = job.parts / PLAN_FILE
    if not path.is_file():
        return []
    stored = json.loads(path.read_text())
    if stored != plan:
        key = next((k for k in plan if stored.get(k) != plan[k]), "settings")
        raise LatentError(f"{job.parts} holds chunks of another encoding ({key} differs): rerun with the same "
                          f"settings to resume, or delete {job.parts}")
    n_chunks = -(-plan["count"] // job.chunk_size)
    return [k for k in range(n_chunks) if _chunk_path(job.parts, k).is_file()]


def encode_plan(job: EncodeJob, model: Autoencoder | None = None) -> dict[str, Any]:
    """The resolved job (``--dry-run``): counts, latent shape, chunks done, the autoencoder and its
    MACs per image; checks everything :func:`run_encode` checks, encodes and writes nothing."""
    device = resolve_device(job.device)
    model = model or load_autoencoder(job.autoencoder, device)
    _check(job, model)
    keys = selected_keys(source_keys(job.data), job.limit)
    plan = _plan_record(job, model, keys)
    n_ref = int(reference_mask(keys).sum())
    side = job.resolution // model.info.scale_factor
    return {"command": "encode", **{k: v for k, v in asdict(job).items() if k != "overwrite"},
            "device": str(device), "images": len(keys), "train": len(keys) - n_ref, "reference": n_ref,
            "latent_shape": [model.info.latent_channels, side, side], "autoencoder_info": model.info.to_dict(),
            "macs_per_image": autoencoder_macs(model, job.resolution), "chunks": -(-len(keys) // job.chunk_size),
            "chunks_done": len(_resume_state(job, plan)), "parts": str(job.parts)}


@torch.no_grad()
def encode_images(model: Autoencoder, images: np.ndarray, batch_size: int,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 ``(n, r, r, 3)`` images -> float32 raw latents ``(n, C, r / f, r / f)``."""
    out = [model.encode(to_model_range(images[i:i + batch_size]).to(device)).float().cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.info.latent_channels, 0, 0), dtype=np.float32)


@dataclass(frozen=True)
class EncodeReport:
    out: Path
    count: int
    shape: tuple[int, int, int]
    seconds: float  # encoding time of this call (reading images included)
    total_seconds: float  # of every chunk, over all calls
    chunks_resumed: int


def run_encode(job: EncodeJob, progress: bool = True) -> EncodeReport:
    """Encode ``job`` chunk by chunk (resuming), then assemble and write the latent file."""
    device = resolve_device(job.device)
    model = load_autoencoder(job.autoencoder, device)
    _check(job, model)
    keys = selected_keys(source_keys(job.data), job.limit)
    plan = _plan_record(job, model, keys)
    done = set(_resume_state(job, plan))
    atomic_write_json(job.parts / PLAN_FILE, plan)
    n_chunks = -(-len(keys) // job.chunk_size)
    start = time.perf_counter()
    with progress_bar(total=len(keys), progress=progress, desc="encoding", unit="img") as bar:
        bar.update(sum(min(job.chunk_size, len(keys) - k * job.chunk_size) for k in done))
        for k in sorted(set(range(n_chunks)) - done):
            chunk_start = time.perf_counter()
            chunk_keys = keys[k * job.chunk_size:(k + 1) * job.chunk_size]
            images, read = read_images(job.data, chunk_keys, job.resolution)
            latents = encode_images(model, images, job.batch_size, device)
            spent = np.float64(time.perf_counter() - chunk_start)
            atomic_write(_chunk_path(job.parts, k),
                         lambda f, z=latents, r=read, s=spent: np.savez(f, latents=z, keys=np.array(r), seconds=s))
            bar.update(len(chunk_keys))
    seconds = time.perf_counter() - start
    return _assemble(job, model, n_chunks, seconds, len(done), str(device))


def _assemble(job: EncodeJob, model: Autoencoder, n_chunks: int, seconds: float, resumed: int,
              device: str) -> EncodeReport:
    parts, keys, chunk_seconds = [], [], 0.0
    for k in range(n_chunks):
        with np.load(_chunk_path(job.parts, k), allow_pickle=False) as data:
            chunk_seconds += float(data["seconds"])
            if len(data["keys"]):
                parts.append(data["latents"])
                keys += [str(v) for v in data["keys"]]
    if not keys:
        raise LatentError(f"none of the images of {job.data} could be read: nothing to encode")
    latents = np.concatenate(parts)
    train = ~reference_mask(keys)
    normalisation = measure_normalisation(latents[train] if train.sum() > 1 else latents, job.normalisation)
    meta = {"autoencoder": model.info.to_dict(), "resolution": job.resolution, "source": job.data,
            "source_fingerprint": source_fingerprint(job.data), "limit_per_split": job.limit,
            "normalisation": {"mode": job.normalisation, "measured_on": f"train split ({int(train.sum())} latents)"
                              if train.sum() > 1 else f"all {len(keys)} latents (train split too small)"},
            "encode_seconds": round(chunk_seconds, 3), "this_call_seconds": round(seconds, 3),
            "chunks_resumed": resumed, "images_per_s": round(len(keys) / max(chunk_seconds, 1e-9), 2), "device": device,
            "device_name": device_name(device), "python": platform.python_version(), "torch": torch.__version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    write_latents(job.out, latents, keys, normalisation, meta)
    shutil.rmtree(job.parts, ignore_errors=True)
    return EncodeReport(Path(job.out), len(keys), tuple(latents.shape[1:]), seconds, chunk_seconds, resumed)
