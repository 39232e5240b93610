"""What ``memekit encode`` is asked: :class:`EncodeJob`, torch-free so that the command line reads
its defaults without importing torch; :mod:`memekit.analysis.encoding` runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .latent_format import NORMALISATIONS, LatentError


@dataclass(frozen=True)
class EncodeJob:
    """Encode the images of ``data`` at ``resolution`` px with the autoencoder in the folder
    ``autoencoder`` into the latent file ``out``."""

    data: str
    autoencoder: str
    out: str
    resolution: int = 128
    batch_size: int = 32  # images per autoencoder call
    chunk_size: int = 512  # images per resumable chunk
    limit: int | None = None  # at most the first K images of each split (train and reference)
    normalisation: str = "channel"
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise LatentError(f"unknown normalisation {self.normalisation!r}: choose one of "
                              f"{', '.join(NORMALISATIONS)}")
        if not Path(self.out).name.endswith(".npz"):
            raise LatentError(f"--out {self.out!r}: the latent file must end in .npz")
        for name in ("resolution", "batch_size", "chunk_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LatentError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    @property
    def parts(self) -> Path:
        return Path(self.out).with_name(Path(self.out).name + ".parts")
