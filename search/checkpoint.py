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

Beside each checkpoint, the EMA weights alone as safetensors (when the ``safetensors`` package is
installed), for users who want the model without the optimiser state:
``RUN_DIR/weights/step-XXXXXXXXX.ema.safetensors``, tensors named as in the MultiExpert's state
dict, metadata (strings) ``format`` "memekit-ema-weights", ``version`` "1", ``spec`` (the MemeSpec
JSON), ``step``, ``images_seen``, ``ema_updates``, ``config`` and ``latent`` (JSON text) when the
checkpoint has them. They are pruned with their checkpoints (keep-last-N).
"""

from __future__ import annotations

import importlib.util
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
EMA_WEIGHTS_FORMAT = "memekit-ema-weights"
EMA_WEIGHTS_VERSION = 1
_NAME = re.compile(r"^step-(\d{9})\.pt$")
_EMA_NAME = re.compile(r"^step-(\d{9})\.ema\.safetensors$")
UNREADABLE_SUFFIX = ".unreadable"  # an unreadable checkpoint set aside: out of list_checkpoints, kept to look at


class CheckpointError(MemekitError, ValueError):
    """A checkpoint is missing, corrupted or not memekit's."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint file that cannot be read whole (truncated, damaged, incomplete): a run may fall
    back to an older one. ``reason``: why, as a clause ("the file is truncated ...")."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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


def ema_weights_path(run_dir: str | Path, step: int) -> Path:
    """``RUN_DIR/weights/step-XXXXXXXXX.ema.safetensors``: the EMA weights of the checkpoint at ``step``."""
    return Path(run_dir) / "weights" / f"step-{step:09d}.ema.safetensors"


def ema_weights_available() -> bool:
    """Whether the ``safetensors`` package is installed (EMA weights are written only then)."""
    return importlib.util.find_spec("safetensors") is not None


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, keep_last: int, ema_weights: bool = True) -> Path:
    """Write ``state`` as ``checkpoints/step-XXXXXXXXX.pt`` and (``ema_weights``, when safetensors is
    installed) its EMA weights as ``weights/step-XXXXXXXXX.ema.safetensors``; delete all but the last
    ``keep_last`` checkpoints and the weights of the deleted ones."""
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    step = int(state["step"])
    path = checkpoint_path(run_dir, step)
    atomic_write(path, lambda f: torch.save(state, f), fsync=True)
    if ema_weights and ema_weights_available():
        save_ema_weights(state, ema_weights_path(run_dir, step))
    kept = list_checkpoints(run_dir)[-keep_last:]
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    _prune_ema_weights(run_dir, {checkpoint_step(p) for p in kept})
    return path


def save_ema_weights(state: dict[str, Any], path: str | Path) -> Path:
    """The ``ema`` state dict of a checkpoint ``state`` as a safetensors file with the spec (and the
    counters, config and latent record the state has) in its metadata; written atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state["ema"].items()}
    metadata = {"format": EMA_WEIGHTS_FORMAT, "version": str(EMA_WEIGHTS_VERSION), "spec": state["spec"]}
    for key in ("step", "images_seen", "ema_updates", "config", "latent"):
        if state.get(key) is not None:
            metadata[key] = str(state[key])
    data = save(tensors, metadata)
    return atomic_write(path, lambda f: f.write(data), fsync=True)


def load_ema_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], MemeSpec, dict[str, str]]:
    """``(state dict, spec, metadata)`` of an EMA weights file written by :func:`save_ema_weights`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"EMA weights {str(p)!r} do not exist")
    try:
        with safe_open(p, framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(p)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"EMA weights {str(p)!r} cannot be read ({_first_sentence(err)})") from None
    if metadata.get("format") != EMA_WEIGHTS_FORMAT or "spec" not in metadata:
        raise CheckpointError(f"{str(p)!r} is not a memekit EMA weights file (no format {EMA_WEIGHTS_FORMAT!r} and "
                              "spec in its metadata)")
    try:
        spec = MemeSpec.from_json(metadata["spec"])
    except SpecError as err:
        raise CheckpointError(f"EMA weights {str(p)!r} hold an invalid spec: {err}") from None
    return tensors, spec, metadata


def _prune_ema_weights(run_dir: str | Path, keep_steps: set[int]) -> None:
    """Delete the EMA weights of every step not in ``keep_steps``."""
    folder = Path(run_dir) / "weights"
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _EMA_NAME.match(path.name)
        if match is not None and int(match.group(1)) not in keep_steps:
            path.unlink(missing_ok=True)


def set_aside(path: str | Path) -> Path:
    """Rename an unreadable checkpoint to ``NAME.unreadable``: out of the run's checkpoints (so that
    keep-last-N never counts it), kept for inspection."""
    p = Path(path)
    target = p.with_name(p.name + UNREADABLE_SUFFIX)
    p.replace(target)
    return target


def _first_sentence(err: BaseException) -> str:
    """A whole first sentence of ``err``'s message (never cut mid-word), or its type's name."""
    text = str(err).strip().splitlines()[0].strip() if str(err).strip() else ""
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    if not sentence or len(sentence) > 160:
        return type(err).__name__
    return sentence


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
        reason = _load_failure(err)
        raise UnreadableCheckpoint(f"checkpoint {str(p)!r} is corrupted or not a memekit checkpoint: {reason}; give "
                                   "an intact checkpoint of memekit train, or delete this one to use an older one",
                                   reason) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(p)!r} is not a memekit checkpoint (no 'format': {CHECKPOINT_FORMAT!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {str(p)!r} has version {state.get('version')!r}; this memekit reads "
                              f"version {CHECKPOINT_VERSION}")
    if not isinstance(state.get("spec"), str):
        raise CheckpointError(f"checkpoint {str(p)!r} has no spec: it cannot be rebuilt "
                              "(was it written by memekit train?)")
    for key in ("model", "ema", "step"):
        if key not in state:
            raise UnreadableCheckpoint(f"checkpoint {str(p)!r} lacks {key!r}: the file is incomplete; give an intact "
                                       "checkpoint of memekit train", f"it lacks {key!r}")
    state["path"] = str(p)
    return state


def _load_failure(err: BaseException) -> str:
    """Why ``torch.load`` failed, as a whole clause."""
    if "GLOBAL" in str(err):
        return "it holds pickled objects that a safe load refuses (it was not written by memekit train)"
    return "the file is empty, truncated, damaged or not a PyTorch file (as when a write or a copy was cut off)"


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
