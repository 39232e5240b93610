"""Training checkpoints: atomic writes, keep-last-N, safe loading (``weights_only=True``).

A checkpoint is a plain dict of tensors, numbers and strings (no pickled classes):

    format        "memekit-checkpoint", version 1
    spec          the MemeSpec as JSON text
    config        the TrainConfig as JSON text
    step, images_seen, images_per_expert
    model         state dict of the MultiExpert
    ema           state dict of the EMA copy, ema_updates: number of EMA updates so far
    optimizer     AdamW state dict; scaler: GradScaler state dict (fp16) or {}
    latent        (runs trained on latents only) the latent data's record as JSON text: shape, image
                  resolution, autoencoder, normalisation (memekit.analysis.latents.LatentHeader.record)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from memekit.space import MemeSpec
from memekit.space.errors import MemekitError, SpecError
from memekit.space.files import atomic_write

CHECKPOINT_FORMAT = "memekit-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step-(\d{9})\.pt$")


class CheckpointError(MemekitError, ValueError):
    """A checkpoint is missing, corrupted or not memekit's."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:09d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def checkpoint_step(path: str | Path) -> int:
    """The training step a checkpoint file holds, read from its name (``step-XXXXXXXXX.pt``)."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{str(path)!r} is not named step-XXXXXXXXX.pt: give a checkpoint of memekit train")
    return int(match.group(1))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, keep_last: int) -> Path:
    """Write ``state`` as ``checkpoints/step-XXXXXXXXX.pt`` and delete all but the last ``keep_last``."""
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    path = checkpoint_path(run_dir, int(state["step"]))
    atomic_write(path, lambda f: torch.save(state, f), fsync=True)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; a run folder means its latest checkpoint."""
    p = Path(path)
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"{str(p)!r} holds no checkpoints/step-*.pt: give a run folder of memekit train")
        p = latest
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {str(p)!r} is corrupted or not a memekit checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a memekit checkpoint (no 'format': {CHECKPOINT_FORMAT!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {str(p)!r} has version {state.get('version')!r}; this memekit reads "
                              f"version {CHECKPOINT_VERSION}")
    if not isinstance(state.get("spec"), str):
        raise CheckpointError(f"checkpoint {str(p)!r} has no spec: it cannot be rebuilt (was it written by memekit train?)")
    for key in ("model", "ema", "step"):
        if key not in state:
            raise CheckpointError(f"checkpoint {str(p)!r} lacks {key!r}: the file is incomplete")
    state["path"] = str(p)
    return state


def checkpoint_spec(state: dict[str, Any]) -> MemeSpec:
    """The MemeSpec stored in a loaded checkpoint."""
    try:
        return MemeSpec.from_json(state["spec"])
    except SpecError as err:
        raise CheckpointError(f"checkpoint {state.get('path', '?')!r} holds an invalid spec: {err}") from None


def checkpoint_latent(state: dict[str, Any]) -> dict[str, Any] | None:
    """The latent record of a checkpoint trained on latents; None for a pixel-space run."""
    text = state.get("latent")
    if not text:
        return None
    try:
        record = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {state.get('path', '?')!r} holds an unreadable latent record") from None
    return record if isinstance(record, dict) else None
