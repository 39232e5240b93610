"""The train / reference split every data source shares, and the error of a source that cannot be read.

An image (or the latent of an image) is in the **reference** split when ``crc32(key) % 10 == 0``
(about 10 %), and in the **train** split otherwise (:func:`reference_mask`). The key is the image's
relative path for folders, and its index (as text) for ``.npz`` and builtin sources, so adding files
never moves an existing image between splits; a latent file stores its images' keys, so its split is
theirs. Images (:mod:`memekit.analysis.data`) and latents (:mod:`memekit.analysis.latents`) both read
the rule from here, so neither module needs the other to split.
"""

from __future__ import annotations

import zlib

import numpy as np

from memekit.space.errors import MemekitError

SPLITS = ("all", "train", "reference")


class DataError(MemekitError, ValueError):
    """A data source cannot be read."""


def reference_mask(keys: list[str]) -> np.ndarray:
    """Boolean mask of the reference split: ``crc32(key) % 10 == 0``."""
    return np.array([zlib.crc32(k.encode()) % 10 == 0 for k in keys], dtype=bool)
