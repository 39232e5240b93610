"""Latent data sets: autoencoder latents as training data, in one ``.npz`` file.

A latent file holds

- ``latents``: float32 ``(N, C, H, W)``, the autoencoder's raw latents;
- ``keys``: the key of each latent's image (its relative path in the image folder), so the
  train / reference split of the latents is the split of their images
  (:func:`memekit.analysis.splits.reference_mask`, ``crc32(key) % 10 == 0``);
- ``shift`` and ``scale``: float32 ``(C,)``, the normalisation ``x = (z - shift) / scale`` that maps
  the latents to unit scale, inverted by ``z = x * scale + shift`` before decoding;
- ``meta``: JSON text: ``format`` (``memekit-latents``), ``version``, the ``autoencoder``
  (:class:`~memekit.analysis.autoencoders.AutoencoderInfo`), the image ``resolution`` and ``source``,
  the ``normalisation`` mode and where it was measured, and the encoding time.

Normalisation modes (:func:`measure_normalisation`, measured on the **train** split only, so the
reference split plays no part in training statistics): ``channel`` (per-channel mean and standard
deviation: every channel has unit variance) and ``global`` (one mean and one standard deviation
for all channels: the channels keep their relative power). A file with latents but without
``shift`` and ``scale`` is refused: training needs unit-scale data and decoding needs the inverse.
Only ``latents``, ``shift`` and ``scale`` are required; without ``keys`` the key is the index (as
for image ``.npz`` files), without ``meta`` the latents cannot be decoded.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memekit.space.files import atomic_write

from .autoencoders import (
    Autoencoder,
    AutoencoderError,
    AutoencoderInfo,
    autoencoder_macs,
    check_recorded,
    load_autoencoder,
)
from .latent_format import (  # noqa: F401 - the format's names, torch-free there (re-exported)
    LATENT_FORMAT,
    LATENT_VERSION,
    NORMALISATIONS,
    REQUIRED,
    LatentError,
)
from .pixels import to_uint8
from .splits import SPLITS, reference_mask


@dataclass(frozen=True, eq=False)
class Normalisation:
    """``x = (z - shift) / scale`` per channel (module docstring)."""

    mode: str
    shift: np.ndarray  # (C,) float32
    scale: np.ndarray  # (C,) float32, > 0

    def apply(self, z: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Raw latents ``(N, C, H, W)`` -> unit scale."""
        shift, scale = self._broadcast(z)
        return (z - shift) / scale

    def invert(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Unit-scale latents -> raw latents (what the decoder takes)."""
        shift, scale = self._broadcast(x)
        return x * scale + shift

    def _broadcast(self, x: np.ndarray | torch.Tensor) -> tuple[Any, Any]:
        shift, scale = self.shift[:, None, None], self.scale[:, None, None]  # (C, 1, 1)
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(shift, device=x.device, dtype=x.dtype),
                    torch.as_tensor(scale, device=x.device, dtype=x.dtype))
        return shift, scale


def measure_normalisation(latents: np.ndarray, mode: str = "channel") -> Normalisation:
    """Mean and standard deviation of ``latents`` (N, C, H, W), per channel (``channel``) or over all
    channels (``global``, repeated C times); float64 accumulation."""
    if mode not in NORMALISATIONS:
        raise LatentError(f"unknown normalisation {mode!r}: choose one of {', '.join(NORMALISATIONS)}")
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 4 or len(z) == 0:
        raise LatentError(f"latents must be a non-empty (N, C, H, W) array, got shape {z.shape}")
    axes = (0, 2, 3) if mode == "channel" else (0, 1, 2, 3)
    shift = np.broadcast_to(z.mean(axis=axes), (z.shape[1],))
    scale = np.broadcast_to(z.std(axis=axes), (z.shape[1],))
    if not (scale > 0).all():
        raise LatentError("a latent channel is constant: it cannot be normalised to unit scale")
    return Normalisation(mode, shift.astype(np.float32), scale.astype(np.float32))


@dataclass(frozen=True, eq=False)
class LatentHeader:
    """Everything a latent file says about itself, without its latents."""

    path: str
    count: int
    shape: tuple[int, int, int]  # (C, H, W) of one latent
    normalisation: Normalisation
    autoencoder: AutoencoderInfo | None = None
    resolution: int | None = None  # image side the latents encode
    source: str | None = None  # the image data the latents were made from
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def side(self) -> int:
        return self.shape[-1]

    def record(self) -> dict[str, Any]:
        """What a training run stores about its latent data (JSON): enough to decode its samples."""
        return {"path": self.path, "shape": list(self.shape), "resolution": self.resolution, "source": self.source,
                "autoencoder": self.autoencoder.to_dict() if self.autoencoder else None,
                "normalisation": {"mode": self.normalisation.mode, "shift": self.normalisation.shift.tolist(),
                                  "scale": self.normalisation.scale.tolist()}}


def normalisation_from_record(record: dict[str, Any]) -> Normalisation:
    """The :class:`Normalisation` of :meth:`LatentHeader.record`."""
    norm = record["normalisation"]
    return Normalisation(norm["mode"], np.asarray(norm["shift"], dtype=np.float32),
                         np.asarray(norm["scale"], dtype=np.float32))


# ---- reading -----------------------------------------------------------------------------------
def _members(path: Path) -> dict[str, str]:
    """Array name -> member name of an ``.npz`` (a zip of ``NAME.npy``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {Path(m).stem: m for m in archive.namelist() if m.endswith(".npy")}
    except (OSError, zipfile.BadZipFile) as err:
        raise LatentError(f"cannot read {str(path)!r} as .npz: {type(err).__name__}: {err}") from None


def is_latent_file(source: str | Path) -> bool:
    """Whether ``source`` is an ``.npz`` holding a ``latents`` array (read from the zip index only)."""
    path = Path(source)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        return "latents" in _members(path)
    except LatentError:
        return False


def _array_shape(path: Path, member: str) -> tuple[int, ...]:
    """The shape of one ``.npy`` member without reading its data."""
    with zipfile.ZipFile(path) as archive, archive.open(member) as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    return tuple(shape)


def read_latent_header(source: str | Path) -> LatentHeader:
    """The header of a latent file (module docstring), with one-line errors for what is missing."""
    path = Path(source)
    if not path.is_file():
        raise LatentError(f"latent file {str(path)!r} does not exist: make one with memekit encode")
    members = _members(path)
    missing = [k for k in REQUIRED if k not in members]
    if "latents" in members and missing:
        raise LatentError(f"{path.name} holds latents without their normalisation (no {' or '.join(missing)}): "
                          "encode it with memekit encode, or add per-channel 'shift' and 'scale' arrays")
    if missing:
        raise LatentError(f"{path.name} is not a latent file (no 'latents' array): make one with memekit encode")
    shape = _array_shape(path, members["latents"])
    if len(shape) != 4 or shape[0] == 0 or shape[2] != shape[3]:
        raise LatentError(f"{path.name}: 'latents' must be a non-empty (N, C, H, H) array, got shape {shape}")
    with np.load(path, allow_pickle=False) as data:
        shift, scale = (np.asarray(data[k], dtype=np.float32) for k in ("shift", "scale"))
        meta = json.loads(str(data["meta"])) if "meta" in members else {}
    if (shift.shape != (shape[1],) or scale.shape != (shape[1],) or not (scale > 0).all()
            or not np.isfinite(shift).all()):
        raise LatentError(f"{path.name}: 'shift' and 'scale' must hold one finite number per channel ({shape[1]}), "
                          f"scale > 0; got shapes {shift.shape} and {scale.shape}")
    ae = meta.get("autoencoder")
    norm = Normalisation(meta.get("normalisation", {}).get("mode", "given"), shift, scale)
    return LatentHeader(str(path.resolve()), shape[0], tuple(shape[1:]), norm,
                        AutoencoderInfo.from_dict(ae) if ae else None, meta.get("resolution"), meta.get("source"), meta)


def load_latents(source: str | Path, split: str = "all", limit: int | None = None,
                 normalised: bool = True) -> tuple[np.ndarray, LatentHeader]:
    """Latents of ``split`` (first ``limit``), float32 ``(N, C, H, W)``, normalised to unit scale
    unless ``normalised=False``; with the file's header."""
    if split not in SPLITS:
        raise LatentError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    header = read_latent_header(source)
    try:
        with np.load(source, allow_pickle=False) as data:
            latents = data["latents"]
            keys = [str(k) for k in data["keys"]] if "keys" in data.files else [str(i) for i in range(len(latents))]
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise LatentError(f"cannot read the latents of {str(source)!r}: {type(err).__name__}: {err}") from None
    if split != "all":
        mask = reference_mask(keys)
        latents = latents[mask if split == "reference" else ~mask]
        if len(latents) == 0:
            raise LatentError(f"the {split} split of {str(source)!r} is empty: the file holds too few latents")
    latents = np.asarray(latents[:limit] if limit is not None else latents, dtype=np.float32)
    return (header.normalisation.apply(latents) if normalised else latents).astype(np.float32), header


def write_latents(path: str | Path, latents: np.ndarray, keys: list[str], normalisation: Normalisation,
                  meta: dict[str, Any]) -> Path:
    """Write a latent file atomically (module docstring); ``meta`` gets ``format`` and ``version``."""
    meta = {"format": LATENT_FORMAT, "version": LATENT_VERSION, **meta}
    return atomic_write(path, lambda f: np.savez(f, latents=np.asarray(latents, dtype=np.float32),
                                                  keys=np.array(keys), shift=normalisation.shift,
                                                  scale=normalisation.scale, meta=np.array(json.dumps(meta))))


def latent_record(source: str) -> dict[str, Any] | None:
    """:meth:`LatentHeader.record` of a latent data set, None for image data."""
    return read_latent_header(source).record() if is_latent_file(source) else None


class LatentDecoder:
    """Unit-scale latents ``(B, C, h, w)`` -> uint8 images ``(B, H, W, 3)``: invert the normalisation,
    decode with the autoencoder (``batch`` latents at a time), quantise like pixel samples."""

    def __init__(self, autoencoder: Autoencoder, normalisation: Normalisation, batch: int = 32) -> None:
        self.autoencoder, self.normalisation, self.batch = autoencoder, normalisation, batch

    @property
    def resolution_factor(self) -> int:
        return self.autoencoder.info.scale_factor

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        device = next(self.autoencoder.parameters()).device
        out = []
        for start in range(0, len(latents), self.batch):
            z = self.normalisation.invert(latents[start:start + self.batch].float().to(device))
            out.append(to_uint8(self.autoencoder.decode(z)))
        return np.concatenate(out)


def latent_decoder(record: dict[str, Any], autoencoder: str | Path | None = None,
                   device: torch.device | str = "cpu") -> LatentDecoder:
    """The decoder of a run trained on latents (``record``: :meth:`LatentHeader.record`): the recorded
    autoencoder, or the one in the folder ``autoencoder``, which must have the same weights. One-line
    :class:`~memekit.analysis.autoencoders.AutoencoderError` when it is not available."""
    info = AutoencoderInfo.from_dict(record["autoencoder"]) if record.get("autoencoder") else None
    if info is None and autoencoder is None:
        raise AutoencoderError("cannot decode: the latent data of this run records no autoencoder; pass "
                               "--autoencoder PATH (the folder of the autoencoder that made the latents)")
    if autoencoder is None and not Path(info.path).is_dir():
        raise AutoencoderError(f"cannot decode the latents: their autoencoder folder {info.path} is not available")
    try:
        model = load_autoencoder(autoencoder if autoencoder is not None else info.path, device)
    except AutoencoderError as err:
        raise AutoencoderError(f"cannot decode the latents: {err}") from None
    if info is not None:
        check_recorded(model, info)
    return LatentDecoder(model, normalisation_from_record(record))


def autoencoder_cost(record: dict[str, Any]) -> dict[str, Any]:
    """MACs of decoding one sample and of encoding one image with the autoencoder of ``record``
    (:func:`~memekit.analysis.autoencoders.autoencoder_macs`), or why it is not available."""
    try:
        decoder = latent_decoder(record)
    except AutoencoderError as err:
        return {"autoencoder_available": False, "reason": str(err)}
    macs = autoencoder_macs(decoder.autoencoder, int(record["resolution"]))
    return {"autoencoder_available": True, "decode_macs_per_image": macs["decode"],
            "encode_macs_per_image": macs["encode"]}


def image_source(data: str) -> str:
    """The image data behind a training-data source: ``data`` itself, or for a latent file the image
    source it was encoded from (what decoded samples are compared with)."""
    record = latent_record(data)
    if record is None:
        return data
    if not record.get("source"):
        raise LatentError(f"{data} does not record the images it was encoded from: score its samples with memekit "
                          "fid RUN IMAGES")
    return record["source"]
