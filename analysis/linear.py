"""The optimal linear (Wiener) denoiser of the data, in closed form from its power spectrum.

Model: every channel is a stationary, isotropic random field whose power at FFT coefficient k
(orthonormal 2-D FFT, mean NOT removed, DC and corners beyond Nyquist included) is the data's
ring power ``P(k) = E|X_0(k)|^2`` at the integer radius of k (:func:`ring_power`). For
``x_t = a x_0 + s eps`` the best linear estimate of x_0 is the Wiener filter
``h(k) = a P(k) / (a^2 P(k) + s^2)``; applied to data whose ring power is ``Q(k)`` its expected
squared x_0 error per coefficient is

    e(k) = (1 - a h(k))^2 Q(k) + h(k)^2 s^2      (= P s^2 / (a^2 P + s^2) when Q = P),

and in target units the error is ``(a / s)^2 e`` for eps and ``e / s^2`` for v (``eps_hat - eps =
a (x_0 - x0_hat) / s``; ``v_hat - v = (x_0 - x0_hat) / s``). :func:`linear_denoiser_loss` is the
mean over coefficients and channels at every t: the loss of the ``wiener`` preconditioner with a
zero network, and the reference of the ``val-rel`` objective (the validation loss relative to the
best stationary linear denoiser at each t). :func:`preconditioned` measures ``data_std`` and
``data_spectrum`` for a :class:`~memekit.space.DiffusionSpec`.

The **colour** (affine, channel-mixing) denoiser removes the mean image ``mu`` and models the rest
as stationary with a ``C x C`` cross-power ``S(r) = Re E[Z(k) Z(k)^H]`` per ring r
(:func:`ring_cross_power`). Its filter is ``W = a S (a^2 S + s^2 I)^{-1}`` and, on data whose
mean-removed cross-power (around the same ``mu``) is ``Q``, its x_0 error per coefficient is

    E(k) = (I - a W) Q (I - a W)^T + s^2 W W^T      (= s^2 S (a^2 S + s^2 I)^{-1} when Q = S),

whose trace, averaged over coefficients and channels, is :func:`colour_denoiser_loss` (in target
units as above). With one channel and a zero mean it is the per-channel Wiener filter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from memekit.space import DiffusionSpec
from memekit.space.errors import MemekitError
from memekit.space.rings import ring_counts, ring_index
from memekit.space.spec import PRECONDITIONINGS

from .data import DEFAULT_BACKGROUND, load_data, sample_side
from .spectra import SpectrumError, _model_range_batches, _square_size

STATS_IMAGES = 4096  # training images from which preconditioning statistics are measured


def ring_power(images: np.ndarray | torch.Tensor, batch_size: int = 256,
               device: torch.device | str = "cpu") -> np.ndarray:
    """``E|X_0(k)|^2`` averaged over images and over each integer-radius ring, per channel: float64
    ``(C, ring_count(R))``; images uint8 NHWC or float NCHW in [-1, 1]. The mean is not removed
    (ring 0 is the DC power, ``R^2 E[mean^2]``), corners beyond Nyquist are kept, so by Parseval the
    count-weighted mean over rings is ``E[x^2]`` per pixel."""
    total, count, index = None, 0, None
    for x0 in _model_range_batches(images, batch_size, device):
        if index is None:
            size = _square_size(tuple(x0.shape))
            index = torch.as_tensor(ring_index(size).ravel(), device=x0.device)
            counts = torch.as_tensor(ring_counts(size), device=x0.device, dtype=torch.float64)
        power = torch.fft.fft2(x0.double(), norm="ortho").abs().square().sum(0).flatten(1)  # (C, R*R)
        sums = power.new_zeros((power.shape[0], len(counts))).index_add_(1, index, power)
        total = sums if total is None else total + sums
        count += x0.shape[0]
    if total is None:
        raise SpectrumError("no images to measure a spectrum from")
    return (total / (count * counts)).cpu().numpy()


def linear_denoiser_loss(gain_power: np.ndarray, resolution: int, alpha_bar: np.ndarray,
                         prediction: str = "eps", data_power: np.ndarray | None = None) -> np.ndarray:
    """Expected target-space MSE (per pixel) of the Wiener filter built from ``gain_power`` (C, K)
    on ``resolution``-px data whose ring power is ``data_power`` (default: the same), at every t:
    shape (T,)."""
    gain_power = np.asarray(gain_power, dtype=np.float64)
    q = gain_power if data_power is None else np.asarray(data_power, dtype=np.float64)
    weights = ring_counts(resolution) / resolution**2  # share of the coefficients in each ring
    if q.shape != gain_power.shape or gain_power.shape[1] != len(weights):
        raise MemekitError(f"spectra of shapes {gain_power.shape} and {q.shape} do not both have the "
                           f"{len(weights)} rings of {resolution}-px images")
    ab = np.asarray(alpha_bar, dtype=np.float64)[:, None, None]
    a, s2 = np.sqrt(ab), 1.0 - ab
    h = a * gain_power[None] / (ab * gain_power[None] + s2)
    err_x0 = ((1.0 - a * h) ** 2 * q[None] + h**2 * s2) @ weights  # (T, C)
    scale = ab[:, :, 0] / s2[:, :, 0] if prediction == "eps" else 1.0 / s2[:, :, 0]
    return (err_x0 * scale).mean(axis=1)


def mean_image(images: np.ndarray | torch.Tensor, batch_size: int = 256,
               device: torch.device | str = "cpu") -> np.ndarray:
    """The mean image ``E[x_0]`` in model range (float64 ``(C, R, R)``)."""
    total, count = None, 0
    for x0 in _model_range_batches(images, batch_size, device):
        part = x0.double().sum(0)
        total = part if total is None else total + part
        count += x0.shape[0]
    if total is None:
        raise SpectrumError("no images to measure a mean from")
    return (total / count).cpu().numpy()


def ring_cross_power(images: np.ndarray | torch.Tensor, mean: np.ndarray, batch_size: int = 256,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """``Re E[Z(k) Z(k)^H]`` of ``z = x_0 - mean`` (orthonormal FFT) averaged over each integer-radius
    ring: float64 ``(ring_count(R), C, C)``, symmetric; its diagonal is :func:`ring_power` of z."""
    total, count, index = None, 0, None
    mu = torch.as_tensor(mean, dtype=torch.float64)
    for x0 in _model_range_batches(images, batch_size, device):
        if index is None:
            size = _square_size(tuple(x0.shape))
            index = torch.as_tensor(ring_index(size).ravel(), device=x0.device)
            counts = torch.as_tensor(ring_counts(size), device=x0.device, dtype=torch.float64)
        z = torch.fft.fft2(x0.double() - mu.to(x0.device), norm="ortho").flatten(2)  # (B, C, R*R)
        outer = torch.einsum("bck,bdk->kcd", z, z.conj()).real  # (R*R, C, C), summed over the batch
        sums = outer.new_zeros((len(counts), *outer.shape[1:])).index_add_(0, index, outer)
        total = sums if total is None else total + sums
        count += x0.shape[0]
    if total is None:
        raise SpectrumError("no images to measure a spectrum from")
    cross = (total / (count * counts[:, None, None])).cpu().numpy()
    return (cross + cross.transpose(0, 2, 1)) / 2


def colour_denoiser_loss(gain_cross: np.ndarray, resolution: int, alpha_bar: np.ndarray, prediction: str = "eps",
                         data_cross: np.ndarray | None = None) -> np.ndarray:
    """Expected target-space MSE per pixel (T,) of the colour filter built from ``gain_cross``
    ``(K, C, C)`` on data whose cross-power around the same mean is ``data_cross`` (default the same);
    module docstring."""
    s_ = np.asarray(gain_cross, dtype=np.float64)
    q = s_ if data_cross is None else np.asarray(data_cross, dtype=np.float64)
    weights = ring_counts(resolution) / resolution**2
    if q.shape != s_.shape or s_.shape[0] != len(weights):
        raise MemekitError(f"cross-spectra of shapes {s_.shape} and {q.shape} do not both have the "
                           f"{len(weights)} rings of {resolution}-px images")
    ab = np.asarray(alpha_bar, dtype=np.float64)
    eye = np.eye(s_.shape[1])
    out = np.empty(len(ab))
    for i, a2 in enumerate(ab):
        a, s2 = np.sqrt(a2), 1.0 - a2
        w = a * s_ @ np.linalg.inv(a2 * s_ + s2 * eye)  # (K, C, C)
        rest = eye - a * w
        err = rest @ q @ rest.transpose(0, 2, 1) + s2 * w @ w.transpose(0, 2, 1)
        x0 = float(np.trace(err, axis1=1, axis2=2) @ weights) / s_.shape[1]
        out[i] = x0 * (a2 / s2 if prediction == "eps" else 1.0 / s2)
    return out


def preconditioned(spec: DiffusionSpec, mode: str, images: np.ndarray | torch.Tensor) -> DiffusionSpec:
    """``spec`` with ``preconditioning = mode`` and the data statistics it needs measured from
    ``images`` (uint8 NHWC or float NCHW in [-1, 1]): ``data_std = sqrt(E[x^2])`` per pixel and,
    for ``wiener``, the per-channel ring power (:func:`ring_power`)."""
    if mode not in PRECONDITIONINGS:
        raise MemekitError(f"unknown preconditioning {mode!r}: choose one of {', '.join(PRECONDITIONINGS)}")
    if mode == "none":
        return dataclasses.replace(spec, preconditioning="none", data_std=None, data_spectrum=None,
                                   data_mean=None, data_cross_spectrum=None)
    power = ring_power(images)
    size = sample_side(images)
    mean_square = float((power @ (ring_counts(size) / size**2)).mean())
    spectrum = tuple(tuple(float(f"{v:.6g}") for v in row) for row in power) if mode == "wiener" else None
    mean = cross = None
    if mode == "colour":
        mu = mean_image(images)
        mean, cross = _rounded(mu), _rounded(ring_cross_power(images, mu))
    return dataclasses.replace(spec, preconditioning=mode, data_std=round(mean_square**0.5, 6),
                               data_spectrum=spectrum, data_mean=mean, data_cross_spectrum=cross)


def _rounded(values: np.ndarray) -> tuple:
    """A 3-level nested tuple of 6-significant-digit floats (what a spec stores)."""
    return tuple(tuple(tuple(float(f"{v:.6g}") for v in row) for row in m) for m in values)


def preconditioned_for_data(spec: DiffusionSpec, mode: str, data: str, resolution: int,
                            background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> DiffusionSpec:
    """:func:`preconditioned` with statistics from (at most :data:`STATS_IMAGES` of) the training split
    of the data source ``data`` at ``resolution``, transparent pixels composited onto ``background``.
    The one way a study (:func:`memekit.search.study.plan_study`), a training run
    (:func:`memekit.search.train.with_preconditioning`) and a comparison measure a preconditioning."""
    # what compositing did is said by the run's own load of the data, not by this statistics pass
    images = load_data(data, resolution, split="train", limit=STATS_IMAGES, progress=False, background=background,
                       say=lambda line: None)
    return preconditioned(spec, mode, images)
