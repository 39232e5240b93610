"""The names of memekit's latent file format, torch-free: its format tag and version, the arrays it
must hold, the normalisation modes, and :class:`LatentError`.

:mod:`memekit.analysis.latents` reads and writes the files (the format is described there); these
names live apart so that ``memekit encode`` offers its choices, and
:class:`~memekit.analysis.encode_job.EncodeJob` checks them, without importing torch.
"""

from __future__ import annotations

from .splits import DataError

LATENT_FORMAT = "memekit-latents"
LATENT_VERSION = 1
NORMALISATIONS = ("channel", "global")
REQUIRED = ("latents", "shift", "scale")


class LatentError(DataError):
    """A latent file is missing, malformed or does not fit what uses it."""
