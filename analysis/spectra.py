"""Radially averaged power spectra of clean and noisy images, per-frequency SNR and crossover.

Conventions (one place, used everywhere in memekit):

- Images are in the model range [-1, 1] (``memekit.analysis.data.to_model_range``), latents at unit
  scale (:mod:`memekit.analysis.latents`), shape ``(..., H, W)`` with ``H == W == R``; every channel
  (3 for images, C for latents) is a separate 2-D signal, and frequencies are in cycles per pixel of
  the grid the model sees (for latents: per latent pixel).
- The 2-D FFT is orthonormal (``norm="ortho"``), so Parseval holds, ``sum |X|^2 = sum x^2``, and
  white noise of variance ``s^2`` has ``E|X(k)|^2 = s^2`` at every frequency ``k``.
- The image mean is removed on purpose before the FFT: it only changes the DC coefficient, which
  carries brightness rather than structure and would otherwise dominate every average. The DC bin
  is therefore dropped: radial bins are the integer radii ``k = 1, ..., R // 2`` of the frequency
  grid, at ``f = k / R`` cycles per pixel (up to 0.5 for even ``R``, ``(R - 1) / 2R`` for odd).
  Grid points farther out than ``R // 2`` (the corners) are dropped too, so every bin is a full
  ring.
- RAPSD (radially averaged power spectral density): ``P(k) = mean_{|(ky, kx)| rounds to k} |X|^2``
  (``bincount`` of the power over integer radii, divided by the ring's coefficient count).

The noisy-input identity (exact for white Gaussian eps and an orthonormal FFT; the forward process
``x_t = a_t x_0 + s_t eps``, ``a_t^2 = alpha_bar_t``, ``s_t^2 = 1 - alpha_bar_t``; Ho et al. 2020)::

    E P_t(f) = alpha_bar_t P_0(f) + (1 - alpha_bar_t)
    SNR(t, f) = alpha_bar_t P_0(f) / (1 - alpha_bar_t)

so one pass over the clean data gives the expected spectrum of x_t at every t. The Monte-Carlo
estimate (:func:`monte_carlo_noisy_spectrum`) actually noises images and is the cross-check.
The crossover frequency ``f_c(t)`` (:func:`crossover_frequency`) is where SNR(t, f) first falls
to 1: detail above it is buried in noise at step t, the reading of diffusion as coarse-to-fine
generation in Rissanen et al. 2023 ("Generative modelling with inverse heat dissipation") and
Dieleman 2024 ("Diffusion is spectral autoregression").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from memekit.space.errors import MemekitError
from memekit.space.progress import progress_bar
from memekit.space.rings import ring_index

from .data import sample_side, to_model_range

# band edges in cycles per pixel: low [0, 1/8) (structures of 8 px and more), mid [1/8, 1/4),
# high [1/4, 1/2] (2-4 px detail)
BAND_EDGES = (0.125, 0.25)
BAND_NAMES = ("low", "mid", "high")
CROSSOVER_STATES = ("crossed", "above", "below")


class SpectrumError(MemekitError, ValueError):
    """Input that no spectrum can be computed from (wrong shape, non-square, empty)."""


class RadialBins(NamedTuple):
    """Integer-radius bins of an ``R x R`` FFT grid (DC and corners in the discard bin ``K``)."""

    index: np.ndarray  # (R, R) int64, bin of each FFT coefficient in [0, K]; K = discarded
    counts: np.ndarray  # (K,) coefficients per ring
    frequency: np.ndarray  # (K,) ring radius in cycles per pixel, k / R for k = 1..R//2


def radial_bins(size: int, corners: bool = False) -> RadialBins:
    """Bins of an ``size x size`` FFT grid: coefficient ``(ky, kx)`` (signed integer frequencies,
    ``numpy.fft.fftfreq(size) * size``) goes to ring ``k = floor(sqrt(ky^2 + kx^2) + 1/2)``
    (:func:`memekit.space.precondition.ring_index`); rings ``1..size//2`` are kept as bins
    ``0..K-1``, the DC ring (and, unless ``corners``, the partial rings of the corners beyond the
    Nyquist radius) go to bin ``K``. ``corners=True`` keeps every ring ``1..ring_count(size) - 1``."""
    if not isinstance(size, int | np.integer) or size < 2:
        raise SpectrumError(f"spectra need images of at least 2 x 2 pixels, got size {size!r}")
    ring = ring_index(int(size))
    n_bins = int(ring.max()) if corners else size // 2
    index = np.where((ring >= 1) & (ring <= n_bins), ring - 1, n_bins)
    counts = np.bincount(index.ravel(), minlength=n_bins + 1)[:n_bins]
    frequency = np.arange(1, n_bins + 1, dtype=np.float64) / size
    return RadialBins(index, counts, frequency)


def _square_size(shape: tuple[int, ...]) -> int:
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise SpectrumError(f"spectra need square images (..., R, R), got shape {tuple(shape)}")
    return int(shape[-1])


def rapsd(x: np.ndarray) -> np.ndarray:
    """Radially averaged power spectral density of each 2-D slice (numpy reference).

    ``x``: ``(..., R, R)`` real. Returns ``(..., R // 2)``: ``P(k) = mean_{ring k} |F(x - mean x)|^2``
    with the orthonormal FFT ``F``, at the frequencies ``radial_bins(R).frequency``.
    """
    x = np.asarray(x, dtype=np.float64)
    bins = radial_bins(_square_size(x.shape))
    n_bins = len(bins.counts)
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(x, norm="ortho")) ** 2
    lead = power.shape[:-2]
    rows = power.reshape(-1, power.shape[-2] * power.shape[-1])  # (M, R*R)
    # one bincount for all rows: row m's bins are offset by m * (K + 1)
    offsets = np.arange(len(rows))[:, None] * (n_bins + 1)
    sums = np.bincount((bins.index.ravel()[None] + offsets).ravel(), weights=rows.ravel(),
                       minlength=len(rows) * (n_bins + 1))
    sums = sums.reshape(len(rows), n_bins + 1)[:, :n_bins]
    return (sums / bins.counts).reshape(*lead, n_bins)


def _half_plane(bins: RadialBins) -> tuple[np.ndarray, np.ndarray]:
    """Bin index and weight of each ``rfft2`` coefficient, shape (R, R//2 + 1) each.

    A real image's spectrum is Hermitian, ``X(-k) = conj X(k)``, in the same ring. ``rfft2`` keeps
    columns ``kx = 0..R//2``; columns whose mirror ``-kx`` is not kept (``1 <= kx < R/2``) stand
    for two coefficients (weight 2), columns 0 and R/2 hold their own mirrors (weight 1).
    """
    size = bins.index.shape[0]
    half = size // 2 + 1
    weight = np.full((size, half), 2.0)
    weight[:, 0] = 1.0
    if size % 2 == 0:
        weight[:, -1] = 1.0
    return bins.index[:, :half], weight


def _ring_sums(power_half: torch.Tensor, bins: RadialBins) -> torch.Tensor:
    """``(..., R, R//2+1)`` rfft2 power -> ``(..., K)`` sums over each full ring (index_add with
    Hermitian weights; runs on any device)."""
    index, weight = _half_plane(bins)
    index = torch.as_tensor(index.ravel(), device=power_half.device)
    weighted = (power_half * torch.as_tensor(weight, device=power_half.device, dtype=power_half.dtype)).flatten(-2)
    sums = weighted.new_zeros((*weighted.shape[:-1], len(bins.counts) + 1))
    return sums.index_add_(-1, index, weighted)[..., :-1]


def _rfft_power(x: torch.Tensor) -> torch.Tensor:
    """``|rfft2(x, norm="ortho")|^2``, shape (..., R, R//2+1)."""
    return torch.view_as_real(torch.fft.rfft2(x, norm="ortho")).square().sum(-1)


def rapsd_torch(x: torch.Tensor) -> torch.Tensor:
    """Batched torch version of :func:`rapsd` (same definition, computed with ``rfft2`` and
    Hermitian weights), on ``x``'s device; float32 in, float32 out (float64 in, float64 out)."""
    bins = radial_bins(_square_size(tuple(x.shape)))
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = _rfft_power(x)
    counts = torch.as_tensor(bins.counts, device=x.device, dtype=power.dtype)
    return _ring_sums(power, bins) / counts


def _model_range_batches(images: np.ndarray | torch.Tensor, batch_size: int, device: torch.device | str):
    """Yield float32 ``(B, C, R, R)`` batches in [-1, 1] on ``device``.

    ``images``: uint8 ``(N, R, R, C)`` as returned by ``load_images``, or float ``(N, C, R, R)``
    already in the model range.
    """
    if images.ndim != 4 or len(images) == 0:
        raise SpectrumError(f"images must be a non-empty 4-D batch, got shape {tuple(images.shape)}")
    is_uint8 = images.dtype in (np.uint8, torch.uint8)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if is_uint8:
            yield to_model_range(chunk).to(device)
        else:
            yield torch.as_tensor(chunk).to(device=device, dtype=torch.float32)


def _sum_power(x: torch.Tensor) -> torch.Tensor:
    """``sum_{images, channels} |rfft2(x)|^2`` as float64 (R, R//2+1): one fused square-and-reduce
    over the rows of the (B*C, R*(R//2+1)*2) real view."""
    spec = torch.view_as_real(torch.fft.rfft2(x, norm="ortho"))  # (B, C, R, R//2+1, 2)
    rows = spec.reshape(spec.shape[0] * spec.shape[1], -1)  # (B*C, R*(R//2+1)*2)
    return (rows * rows).sum(0).double().view(*spec.shape[2:]).sum(-1)


def data_power_spectrum(images: np.ndarray | torch.Tensor, batch_size: int = 256,
                        device: torch.device | str = "cpu", progress: bool = False,
                        corners: bool = False) -> np.ndarray:
    """``P_0(f)``: the RAPSD averaged over all images and channels, from ONE pass over the data.

    The power ``|F x_0|^2`` is summed over images and channels on ``device`` and binned once at the
    end (binning commutes with the average). The mean is not subtracted here: it only moves the
    DC coefficient, which no bin holds, so the result equals the mean of :func:`rapsd`.
    Returns float64 ``(R // 2,)``, or with ``corners`` every ring (:func:`radial_bins`).
    """
    total, count, bins = None, 0, None
    batches = _model_range_batches(images, batch_size, device)
    for x0 in progress_bar(batches, progress=progress, total=-(-len(images) // batch_size), desc="spectrum",
                           unit="batch", leave=False):
        bins = bins or radial_bins(_square_size(tuple(x0.shape)), corners)
        power = _sum_power(x0)
        total = power if total is None else total + power
        count += x0.shape[0] * x0.shape[1]
    assert total is not None and bins is not None
    return _ring_sums(total, bins).cpu().numpy() / (count * bins.counts)


def channel_power_spectrum(images: np.ndarray | torch.Tensor, batch_size: int = 256,
                           device: torch.device | str = "cpu", progress: bool = False,
                           corners: bool = False) -> np.ndarray:
    """``P_0^c(f)``: the RAPSD of each channel c averaged over all images, float64 ``(C, K)``, from one
    pass (as :func:`data_power_spectrum`, whose value is the mean over channels of this one)."""
    total, count, bins = None, 0, None
    batches = _model_range_batches(images, batch_size, device)
    for x0 in progress_bar(batches, progress=progress, total=-(-len(images) // batch_size), desc="spectrum",
                           unit="batch", leave=False):
        bins = bins or radial_bins(_square_size(tuple(x0.shape)), corners)
        power = _rfft_power(x0).sum(0).double()  # (C, R, R//2+1): sum over the batch
        total = power if total is None else total + power
        count += x0.shape[0]
    assert total is not None and bins is not None
    return _ring_sums(total, bins).cpu().numpy() / (count * bins.counts)


def spectral_slope(power: np.ndarray, frequency: np.ndarray) -> float:
    """The exponent ``a`` of a power law ``P(f) = c f^-a`` fitted by least squares to
    ``log P = log c - a log f`` over every bin (natural images: about 2, white noise: 0)."""
    f, p = np.asarray(frequency, dtype=np.float64), np.asarray(power, dtype=np.float64)
    if f.shape != p.shape or len(f) < 2 or not (np.isfinite(p).all() and (p > 0).all() and (f > 0).all()):
        raise SpectrumError(f"a spectral slope needs >= 2 bins of positive power, got {len(p)} bins")
    log_f, log_p = np.log(f), np.log(p)
    return float(-np.polyfit(log_f, log_p, 1)[0])


def power_law_spectrum(frequency: np.ndarray, counts: np.ndarray, slope: float, total_power: float) -> np.ndarray:
    """``P(f) = c f^-a`` on the rings ``frequency`` (K,), with ``c`` chosen so that the total power
    ``sum_k n_k P(f_k)`` (``n_k = counts``) is ``total_power``: the radial spectrum of a generic
    image set of slope ``a`` (:func:`spectral_slope`) and a given variance."""
    f, n = np.asarray(frequency, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if f.shape != n.shape or not ((f > 0).all() and (n > 0).all()) or not (total_power > 0 and np.isfinite(slope)):
        raise SpectrumError(f"a power-law spectrum needs positive frequencies and counts, a finite slope and a "
                            f"positive total power, got slope {slope!r} and total power {total_power!r}")
    shape = f ** -float(slope)
    return shape * (float(total_power) / float((n * shape).sum()))


def expected_noisy_spectrum(data_power: np.ndarray, alpha_bar: np.ndarray) -> np.ndarray:
    """``E P_t(f) = alpha_bar_t P_0(f) + (1 - alpha_bar_t)`` for every t: shape ``(T, K)``.

    Exact for ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``, ``eps ~ N(0, I)`` and an
    orthonormal FFT (the cross term has zero mean, white noise has unit power at every f).
    """
    ab = np.asarray(alpha_bar, dtype=np.float64)[:, None]
    return ab * np.asarray(data_power, dtype=np.float64)[None] + (1.0 - ab)


def snr(data_power: np.ndarray, alpha_bar: np.ndarray) -> np.ndarray:
    """Per-frequency signal-to-noise ratio ``SNR(t, f) = alpha_bar_t P_0(f) / (1 - alpha_bar_t)``,
    shape ``(T, K)``. ``alpha_bar_t = 1`` (no noise) gives ``inf``."""
    ab = np.asarray(alpha_bar, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore"):
        return ab * np.asarray(data_power, dtype=np.float64)[None] / (1.0 - ab)


def monte_carlo_noisy_spectrum(images: np.ndarray | torch.Tensor, alpha_bar: np.ndarray,
                               timesteps: list[int] | np.ndarray | None = None, draws: int = 1,
                               seed: int = 0, batch_size: int = 64, device: torch.device | str = "cpu",
                               progress: bool = False) -> np.ndarray:
    """Monte-Carlo ``P_t(f)``: noise every image ``draws`` times at every t in ``timesteps`` (default
    all t) with ``x_t = a_t x_0 + s_t eps`` and average the RAPSD over images, channels and draws.

    Returns ``(len(timesteps), K)``. The cross-check of :func:`expected_noisy_spectrum`: its
    variance given the images is ``2 sum (s^4 + 2 a^2 s^2 |X_0|^2) / (M n_k)^2`` per bin (sum over
    the M = images x channels x draws rings of n_k coefficients each).
    """
    ts = np.arange(len(alpha_bar)) if timesteps is None else np.asarray(timesteps, dtype=np.int64)
    ab = np.asarray(alpha_bar, dtype=np.float64)[ts]
    generator = torch.Generator(device=device).manual_seed(seed)
    total, count, bins = None, 0, None
    batches = _model_range_batches(images, batch_size, device)
    for x0 in progress_bar(batches, progress=progress, total=-(-len(images) // batch_size), desc="monte-carlo",
                           unit="batch", leave=False):
        bins = bins or radial_bins(_square_size(tuple(x0.shape)))
        if total is None:
            total = x0.new_zeros((len(ts), x0.shape[-2], x0.shape[-1] // 2 + 1), dtype=torch.float64)
        for i, a2 in enumerate(ab):
            for _ in range(draws):
                eps = torch.randn(x0.shape, generator=generator, device=device)
                x_t = float(np.sqrt(a2)) * x0 + float(np.sqrt(1.0 - a2)) * eps
                total[i] += _sum_power(x_t - x_t.mean(dim=(-2, -1), keepdim=True))
        count += x0.shape[0] * x0.shape[1] * draws
    assert total is not None and bins is not None
    return _ring_sums(total, bins).cpu().numpy() / (count * bins.counts)


def crossover_frequency(snr_tf: np.ndarray, frequency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``f_c(t)``: the lowest frequency at which ``SNR(t, f)`` falls to 1, and how it was found.

    If bin j is the first with ``SNR < 1``, ``log f_c`` is interpolated linearly in ``log SNR``
    between bins j-1 and j (log-log interpolation). When SNR never crosses: ``SNR >= 1`` at every
    bin gives ``f_c = f_max`` (state ``"above"``: all resolved frequencies still recoverable);
    ``SNR < 1`` already at the lowest bin gives ``f_c = 0`` (state ``"below"``). Since SNR(t, f)
    falls with t at every f, f_c(t) is non-increasing in t. Returns ``(f_c (T,), state (T,))``.
    """
    s = np.atleast_2d(np.asarray(snr_tf, dtype=np.float64))
    f = np.asarray(frequency, dtype=np.float64)
    below = s < 1.0
    first = np.argmax(below, axis=1)  # first bin below 1 (0 if none)
    rows = np.arange(len(s))
    hi = np.clip(first, 1, max(s.shape[1] - 1, 1)) if s.shape[1] > 1 else np.zeros_like(first)
    lo = np.maximum(hi - 1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_above, log_below = np.log(s[rows, lo]), np.log(s[rows, hi])
        frac = np.where(np.isfinite(log_below), log_above / (log_above - log_below), 0.0)
        f_c = np.exp(np.log(f[lo]) + frac * (np.log(f[hi]) - np.log(f[lo])))
    state = np.full(len(s), "crossed", dtype=object)
    never = ~below.any(axis=1)
    at_once = below[:, 0]
    f_c = np.where(never, f[-1], np.where(at_once, 0.0, f_c))
    state[never], state[at_once] = "above", "below"
    return f_c, state


def band_energy_fractions(power: np.ndarray, frequency: np.ndarray, counts: np.ndarray,
                          edges: tuple[float, float] = BAND_EDGES) -> np.ndarray:
    """Fraction of the energy ``sum_k n_k P(k)`` (``n_k`` ring counts) in the low / mid / high bands.

    ``power``: ``(..., K)``; returns ``(..., 3)`` summing to 1. Bands: ``f < edges[0]``,
    ``edges[0] <= f < edges[1]``, ``f >= edges[1]`` (cycles per pixel; see :data:`BAND_EDGES`).
    A band with no bin (tiny images) has fraction 0.
    """
    energy = np.asarray(power, dtype=np.float64) * np.asarray(counts)
    band = np.searchsorted(np.asarray(edges), np.asarray(frequency), side="right")  # 0, 1, 2
    parts = np.stack([energy[..., band == b].sum(axis=-1) for b in range(3)], axis=-1)
    return parts / parts.sum(axis=-1, keepdims=True)


@dataclass(frozen=True, eq=False)
class SpectralProfile:
    """The data's radial power spectrum ``P_0(f)`` and a schedule's ``alpha_bar_t``: everything
    else (expected spectra, SNR, crossover) follows in closed form."""

    frequency: np.ndarray  # (K,) cycles per pixel
    counts: np.ndarray  # (K,) FFT coefficients per ring
    data_power: np.ndarray  # (K,) P_0(f), images in [-1, 1], mean removed
    alpha_bar: np.ndarray  # (T,)
    n_images: int
    resolution: int
    corner_power: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))  # rings past R // 2
    corner_counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    channel_power: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))  # (C, K) per channel
    channel_corner_power: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))  # (C, rings past)

    @property
    def timesteps(self) -> int:
        return len(self.alpha_bar)

    @property
    def all_rings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(frequency, counts, data_power)`` of every ring, the corners beyond the Nyquist radius
        included (their partial rings reach ``f = sqrt(2) / 2``): every coefficient but DC once."""
        k = len(self.frequency) + np.arange(1, len(self.corner_power) + 1)
        return (np.concatenate([self.frequency, k / self.resolution]),
                np.concatenate([self.counts, self.corner_counts]),
                np.concatenate([self.data_power, self.corner_power]))

    @property
    def expected_power(self) -> np.ndarray:
        """``E P_t(f)``, shape (T, K)."""
        return expected_noisy_spectrum(self.data_power, self.alpha_bar)

    @property
    def snr(self) -> np.ndarray:
        """``SNR(t, f)``, shape (T, K)."""
        return snr(self.data_power, self.alpha_bar)

    def crossover(self) -> tuple[np.ndarray, np.ndarray]:
        """``(f_c(t), state(t))``, see :func:`crossover_frequency`."""
        return crossover_frequency(self.snr, self.frequency)

    def channel_crossover(self) -> np.ndarray:
        """``f_c(t)`` of every channel's own spectrum, shape (C, T) (:func:`crossover_frequency`)."""
        return np.stack([crossover_frequency(snr(p, self.alpha_bar), self.frequency)[0] for p in self.channel_power])

    def with_alpha_bar(self, alpha_bar: np.ndarray) -> SpectralProfile:
        """The same data under another schedule (P_0 does not depend on the schedule)."""
        return dataclasses.replace(self, alpha_bar=np.asarray(alpha_bar, dtype=np.float64))

    @property
    def slope(self) -> float:
        """The power-law slope ``a`` of ``P_0(f) ~ f^-a``, fitted over the full rings ``1..R // 2``
        (:func:`spectral_slope`; the corners' partial rings are left out of the fit)."""
        return spectral_slope(self.data_power, self.frequency)

    def power_law_reference(self, slope: float | None = None) -> SpectralProfile:
        """A generic reference of this data: the same rings, schedule, resolution, image and channel
        counts, with ``P(f) = c f^-slope`` (default: :attr:`slope`) on every ring, corners included,
        and the data's total power ``sum_k n_k P_0(f_k)`` over those rings (:func:`power_law_spectrum`);
        every channel gets that spectrum. A profile that is a power law over every ring is its own
        reference (up to rounding)."""
        frequency, counts, power = self.all_rings
        reference = power_law_spectrum(frequency, counts, self.slope if slope is None else slope,
                                       float((counts * power).sum()))
        k = len(self.frequency)
        channels = self.channel_power.shape[0]
        return dataclasses.replace(self, data_power=reference[:k], corner_power=reference[k:],
                                   channel_power=(np.tile(reference[:k], (channels, 1)) if channels
                                                  else self.channel_power),
                                   channel_corner_power=(np.tile(reference[k:], (channels, 1)) if channels
                                                         else self.channel_corner_power))


def spectral_profile(images: np.ndarray | torch.Tensor, alpha_bar: np.ndarray, batch_size: int = 256,
                     device: torch.device | str = "cpu", progress: bool = False) -> SpectralProfile:
    """One pass over ``images`` (see :func:`channel_power_spectrum`) -> :class:`SpectralProfile`: the
    channel mean is ``P_0``, the channels' own spectra are kept (``channel_power``)."""
    size = sample_side(images)
    bins = radial_bins(size, corners=True)
    channels = channel_power_spectrum(images, batch_size=batch_size, device=device, progress=progress, corners=True)
    power = channels.mean(axis=0)  # every channel has the same coefficient count
    k = size // 2
    return SpectralProfile(frequency=bins.frequency[:k], counts=bins.counts[:k], data_power=power[:k],
                           alpha_bar=np.asarray(alpha_bar, dtype=np.float64), n_images=len(images),
                           resolution=size, corner_power=power[k:], corner_counts=bins.counts[k:],
                           channel_power=channels[:, :k], channel_corner_power=channels[:, k:])


def summary_frame(profile: SpectralProfile, edges: tuple[float, float] = BAND_EDGES) -> pd.DataFrame:
    """One row per t: ``alpha_bar``, schedule ``log_snr = log(alpha_bar / (1 - alpha_bar))``,
    ``crossover_frequency`` f_c(t) and its ``crossover`` state, ``energy_{low,mid,high}`` (band
    fractions of E P_t) and ``signal_{low,mid,high}`` (share of each band's energy that is signal,
    ``alpha_bar sum n_k P_0 / sum n_k E P_t``)."""
    ab = profile.alpha_bar
    frequency, counts, data_power = profile.all_rings  # the corners belong to the high band
    expected = expected_noisy_spectrum(data_power, ab)
    f_c, state = profile.crossover()
    energy = band_energy_fractions(expected, frequency, counts, edges)
    band = np.searchsorted(np.asarray(edges), frequency, side="right")
    frame = pd.DataFrame({"t": np.arange(len(ab)), "alpha_bar": ab,
                          "log_snr": np.log(ab) - np.log1p(-ab),
                          "crossover_frequency": f_c, "crossover": state})
    for b, name in enumerate(BAND_NAMES):
        frame[f"energy_{name}"] = energy[:, b]
    signal = ab[:, None] * data_power[None] * counts
    total = expected * counts
    for b, name in enumerate(BAND_NAMES):
        in_band = band == b
        with np.errstate(invalid="ignore"):
            frame[f"signal_{name}"] = signal[:, in_band].sum(1) / total[:, in_band].sum(1)
    return frame


def spectrum_frame(profile: SpectralProfile) -> pd.DataFrame:
    """Tidy (t, f) table: ``t, frequency, data_power, expected_power, snr`` (T x K rows)."""
    T, K = profile.timesteps, len(profile.frequency)
    return pd.DataFrame({
        "t": np.repeat(np.arange(T), K),
        "frequency": np.tile(profile.frequency, T),
        "data_power": np.tile(profile.data_power, T),
        "expected_power": profile.expected_power.ravel(),
        "snr": profile.snr.ravel(),
    })


class LogSpectralDistance(NamedTuple):
    """How far one image set's radial power spectrum is from another's, in dB (see
    :func:`log_spectral_distance`). Band values are signed: positive = A has too much power."""

    lsd: float  # sqrt(mean_k (10 log10(P_a(k) / P_b(k)))^2) over all bins
    low: float  # mean of 10 log10(P_a / P_b) over the low band's bins (NaN if it has none)
    mid: float
    high: float


def log_spectral_distance_of_spectra(power_a: np.ndarray, power_b: np.ndarray, frequency: np.ndarray,
                                     edges: tuple[float, float] = BAND_EDGES) -> LogSpectralDistance:
    """LSD between two radial power spectra ``(K,)`` on the bins ``frequency`` (cycles per pixel):
    ``r(k) = 10 log10(P_a(k) / P_b(k))`` dB, ``lsd = sqrt(mean_k r(k)^2)`` and the mean of ``r`` per
    band (``f < edges[0]``, ``edges[0] <= f < edges[1]``, ``f >= edges[1]``, as
    :func:`band_energy_fractions`). A bin without power on either side has no log ratio: error."""
    power_a, power_b = np.asarray(power_a, dtype=np.float64), np.asarray(power_b, dtype=np.float64)
    frequency = np.asarray(frequency, dtype=np.float64)
    if power_a.shape != power_b.shape or power_a.shape != frequency.shape or power_a.ndim != 1:
        raise SpectrumError(f"spectra must share one (K,) frequency axis, got {power_a.shape}, {power_b.shape} "
                            f"and {frequency.shape}")
    empty = ~((power_a > 0) & (power_b > 0) & np.isfinite(power_a) & np.isfinite(power_b))
    if empty.any():
        raise SpectrumError(f"no power (or not finite) at f = {frequency[empty][0]:.4g} cycles/pixel: the "
                            f"log-spectral distance needs images with detail at every frequency (constant images?)")
    ratio_db = 10.0 * np.log10(power_a / power_b)  # (K,)
    band = np.searchsorted(np.asarray(edges), frequency, side="right")  # 0 low, 1 mid, 2 high
    means = [float(ratio_db[band == b].mean()) if (band == b).any() else float("nan") for b in range(3)]
    return LogSpectralDistance(float(np.sqrt(np.mean(ratio_db ** 2))), *means)


def log_spectral_distance(images_a: np.ndarray, images_b: np.ndarray, batch_size: int = 256,
                          device: torch.device | str = "cpu") -> LogSpectralDistance:
    """Log-spectral distance of two uint8 ``(N, R, R, C)`` image sets at the same resolution: their
    RAPSDs (:func:`data_power_spectrum`: model range [-1, 1], mean over images and channels)
    compared by :func:`log_spectral_distance_of_spectra`. Scaling every image by ``c`` around the
    model range's 0 scales every bin's power by ``c^2``: ``20 log10 c`` dB in every band."""
    for name, images in (("A", images_a), ("B", images_b)):
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and len(images)):
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise SpectrumError(f"log-spectral distance: {name} must be a non-empty uint8 (N, R, R, C) array, "
                                f"got {got}")
    if images_a.shape[1:] != images_b.shape[1:]:
        raise SpectrumError(f"log-spectral distance needs images of one size, got {images_a.shape[1:]} vs "
                            f"{images_b.shape[1:]} (H, W, C)")
    bins = radial_bins(_square_size(tuple(images_a.shape[1:3])))
    power_a = data_power_spectrum(images_a, batch_size=batch_size, device=device)
    power_b = data_power_spectrum(images_b, batch_size=batch_size, device=device)
    return log_spectral_distance_of_spectra(power_a, power_b, bins.frequency)
