"""Image autoencoders for latent-space experts: one small interface, two offline implementations.

An :class:`Autoencoder` maps images to latents and back:

- ``encode(images)``: float ``(B, 3, H, W)`` in memekit's model range [-1, 1] -> raw latents
  ``(B, C, H / f, W / f)`` (deterministic: the posterior mode for a KL autoencoder);
- ``decode(latents)``: raw latents -> float ``(B, 3, H, W)`` in [-1, 1] (clamped).

Raw latents are not normalised: memekit measures the per-channel statistics of the data it encodes
and stores them with the latents (:mod:`memekit.analysis.latents`), so an autoencoder's own
``scaling_factor`` is not used.

Implementations, each loaded from a local folder by :func:`load_autoencoder` (nothing downloads):

- :class:`TinyAutoencoder`: memekit's module for the TAEF2 layout (:mod:`memekit.analysis.taef2`),
  from a folder holding ``*encoder.pth`` and ``*decoder.pth`` state dicts;
- :class:`DiffusersAutoencoder`: a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` saved with
  ``save_pretrained`` (``config.json`` + weights); diffusers is an optional extra
  (``pip install diffusers``), imported only here and only when such a folder is loaded.

Every autoencoder carries an :class:`AutoencoderInfo` (kind, folder, fingerprint of its weight files,
latent channels, downsampling factor): latent files and training runs record it, and decoding
checks that the weights are still the ones the latents were made with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memekit.space.counting import count_flops
from memekit.space.errors import MemekitError

from . import taef2

KINDS = ("taef2", "diffusers-AutoencoderKL", "diffusers-AutoencoderTiny")
DIFFUSERS_CLASSES = ("AutoencoderKL", "AutoencoderTiny")
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


class AutoencoderError(MemekitError, ValueError):
    """An autoencoder folder cannot be loaded, or does not match the latents it should decode."""


@dataclass(frozen=True)
class AutoencoderInfo:
    """What identifies an autoencoder (recorded in latent files and runs)."""

    kind: str  # one of KINDS
    path: str  # the folder it was loaded from (absolute)
    fingerprint: str  # sha256 over its weight and config files (first 16 hex digits)
    latent_channels: int
    scale_factor: int  # image pixels per latent pixel, per side

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderInfo:
        try:
            return cls(**{k: data[k] for k in ("kind", "path", "fingerprint", "latent_channels", "scale_factor")})
        except (KeyError, TypeError):
            raise AutoencoderError(f"not an autoencoder record: {json.dumps(data)[:120]}") from None


class Autoencoder(nn.Module):
    """The interface: images in [-1, 1] <-> raw latents (module docstring)."""

    info: AutoencoderInfo

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TinyAutoencoder(Autoencoder):
    """The TAEF2 layout (:mod:`memekit.analysis.taef2`); works in [0, 1] internally."""

    def __init__(self, encoder_state: dict[str, torch.Tensor], decoder_state: dict[str, torch.Tensor],
                 info: AutoencoderInfo) -> None:
        super().__init__()
        channels, width, pool_width = taef2.layout_of(encoder_state)
        self.encoder = taef2.taef2_encoder(channels, width, pool_width)
        self.decoder = taef2.taef2_decoder(channels, width, pool_width)
        self.encoder.load_state_dict(encoder_state)
        self.decoder.load_state_dict(decoder_state)
        self.info = info

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images * 0.5 + 0.5)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents).clamp(0.0, 1.0) * 2.0 - 1.0


class DiffusersAutoencoder(Autoencoder):
    """A diffusers ``AutoencoderKL`` (posterior mode) or ``AutoencoderTiny``; both take [-1, 1]."""

    def __init__(self, model: nn.Module, info: AutoencoderInfo) -> None:
        super().__init__()
        self.model = model
        self.info = info

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.encode(images)
        return out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents).sample.clamp(-1.0, 1.0)


# ---- loading --------------------------------------------------------------------------------------
def fingerprint(folder: Path) -> str:
    """sha256 over the names and bytes of the folder's weight files and ``config.json``, 16 hex digits."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.suffix in WEIGHT_SUFFIXES or path.name == "config.json"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _taef2_files(folder: Path) -> tuple[Path, Path] | None:
    encoders = sorted(folder.glob("*encoder.pth"))
    decoders = sorted(folder.glob("*decoder.pth"))
    return (encoders[0], decoders[0]) if len(encoders) == 1 and len(decoders) == 1 else None


def _diffusers_class(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise AutoencoderError(f"{config} is not a diffusers config (not a JSON object)") from None
    if name not in DIFFUSERS_CLASSES:
        raise AutoencoderError(f"{config} describes a {name!r}: memekit loads diffusers "
                               f"{' or '.join(DIFFUSERS_CLASSES)} folders")
    return name


def _checked_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise AutoencoderError(f"autoencoder folder {str(path)!r} does not exist: give a TAEF2 weights folder "
                               "or a diffusers autoencoder saved with save_pretrained")
    return folder


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise AutoencoderError(f"cannot read {path} as a state dict ({type(err).__name__})") from None


def _load_taef2(folder: Path, files: tuple[Path, Path]) -> TinyAutoencoder:
    encoder_state, decoder_state = (_load_state(p) for p in files)
    try:
        channels, _, _ = taef2.layout_of(encoder_state)
        info = AutoencoderInfo("taef2", str(folder), fingerprint(folder), channels, 8)
        return TinyAutoencoder(encoder_state, decoder_state, info)
    except (KeyError, RuntimeError) as err:
        detail = str(err).splitlines()[0][:120]
        raise AutoencoderError(f"the weights in {folder} do not have the TAEF2 layout ({detail}): see "
                               "memekit.analysis.taef2") from None


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise AutoencoderError("diffusers is not installed: run 'pip install diffusers' (memekit's optional "
                               "'bench' extra) to use diffusers autoencoders") from None
    return diffusers


def _load_diffusers(folder: Path, class_name: str) -> DiffusersAutoencoder:
    cls = getattr(_import_diffusers(), class_name)
    try:
        model = cls.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise AutoencoderError(f"cannot load {class_name} from {folder}: {str(err).splitlines()[0][:160]}") from None
    blocks = (model.config.block_out_channels if class_name == "AutoencoderKL"
              else model.config.encoder_block_out_channels)
    info = AutoencoderInfo(f"diffusers-{class_name}", str(folder), fingerprint(folder),
                           int(model.config.latent_channels), 2 ** (len(blocks) - 1))
    return DiffusersAutoencoder(model, info)


def load_autoencoder(path: str | Path, device: torch.device | str = "cpu") -> Autoencoder:
    """The autoencoder in folder ``path`` (TAEF2 weights or a diffusers folder), in eval mode, float32,
    on ``device``. One-line :class:`AutoencoderError` for anything else."""
    folder = _checked_folder(path)
    files = _taef2_files(folder)
    class_name = _diffusers_class(folder) if files is None else None
    if files is not None:
        model: Autoencoder = _load_taef2(folder, files)
    elif class_name is not None:
        model = _load_diffusers(folder, class_name)
    else:
        raise AutoencoderError(f"{folder} is neither a TAEF2 weights folder (*encoder.pth and *decoder.pth) nor a "
                               "diffusers autoencoder saved with save_pretrained (config.json)")
    return model.float().to(device).eval().requires_grad_(False)


def check_recorded(model: Autoencoder, recorded: AutoencoderInfo) -> None:
    """Refuse to decode latents with other weights than those that made them."""
    if model.info.fingerprint != recorded.fingerprint or model.info.latent_channels != recorded.latent_channels:
        raise AutoencoderError(
            f"the autoencoder in {model.info.path} (fingerprint {model.info.fingerprint}, {model.info.latent_channels} "
            f"channels) is not the one the latents were made with ({recorded.fingerprint}, {recorded.latent_channels} "
            f"channels, from {recorded.path}): give that autoencoder's folder")


def autoencoder_macs(model: Autoencoder, resolution: int) -> dict[str, int]:
    """MACs (FLOPs / 2, :func:`memekit.space.cost.count_flops`) of encoding and of decoding one
    ``resolution`` px image (batch 1)."""
    device = next(model.parameters()).device
    image = torch.zeros(1, 3, resolution, resolution, device=device)
    side = resolution // model.info.scale_factor
    latent = torch.zeros(1, model.info.latent_channels, side, side, device=device)
    return {"encode": count_flops(lambda: model.encode(image)) // 2,
            "decode": count_flops(lambda: model.decode(latent)) // 2}
