"""The integer-radius rings of a square FFT grid: the frequency bins of every spectrum memekit
measures (the data's power, the Wiener filter of :mod:`memekit.space.precondition`, the spectra of
:mod:`memekit.analysis.spectra`). Numpy only: specs validate their spectra without torch."""

from __future__ import annotations

import numpy as np


def ring_index(size: int) -> np.ndarray:
    """Integer-radius ring of every coefficient of a ``size x size`` FFT grid: coefficient
    ``(ky, kx)`` (signed integer frequencies, ``numpy.fft.fftfreq(size) * size``) is in ring
    ``floor(sqrt(ky^2 + kx^2) + 1/2)``; ring 0 is the DC term. Shape (size, size), int64."""
    k = np.fft.fftfreq(size) * size
    return np.floor(np.hypot(k[:, None], k[None, :]) + 0.5).astype(np.int64)


def ring_count(size: int) -> int:
    """Number of rings of a ``size x size`` grid, corners included (``ring_index(size).max() + 1``)."""
    return int(ring_index(size).max()) + 1


def ring_counts(size: int) -> np.ndarray:
    """Coefficients per ring, shape ``(ring_count(size),)``; sums to ``size^2``."""
    return np.bincount(ring_index(size).ravel())
