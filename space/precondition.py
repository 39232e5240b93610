"""Preconditioning: how the network output becomes the prediction (``DiffusionSpec.preconditioning``).

For ``x_t = a_t x_0 + s_t eps`` (``a_t^2 = alpha_bar_t``, ``s_t^2 = 1 - alpha_bar_t``) the network
``F`` is wrapped as

    prediction(x_t, t) = skip(x_t, t) + c_out(t) F(c_in(t) x_t, t)

in the space of the regression target (``eps`` or ``v``), so that ``F = 0`` already predicts with
a linear denoiser and ``F`` learns the residual over it (Karras et al. 2022, "Elucidating the
design space of diffusion-based generative models", EDM, section 5 and appendix B.6, written here
for the discrete VP schedule):

- ``none``: ``skip = 0``, ``c_in = c_out = 1`` (the network predicts the target directly, as in
  DDPM, LDM and the MEME paper).
- ``edm``: the best *scalar* linear denoiser ``x0_skip = a sigma_d^2 / (a^2 sigma_d^2 + s^2) x_t``
  with ``sigma_d^2 = E[x_0^2]`` per pixel (``data_std``, measured from the training data): EDM's
  ``c_skip`` in VP form.
- ``wiener``: the best *stationary* linear denoiser, the per-frequency Wiener filter
  ``X0_skip(k) = a P(k) / (a^2 P(k) + s^2) X_t(k)`` over the orthonormal 2-D FFT of each channel,
  with ``P(k) = E|X_0(k)|^2`` the data's power at the integer-radius ring of ``k``
  (``data_spectrum``, one row per channel, rings ``0..ring_count(R) - 1`` including the DC term
  and the corners beyond Nyquist). ``edm`` is the same filter with a flat spectrum.
- ``colour``: the best *affine* linear denoiser that is stationary in the mean-removed data and
  mixes channels: with the mean image ``mu`` and, per ring, the ``C x C`` cross-power ``S`` of
  ``z = x_0 - mu`` (``data_mean``, ``data_cross_spectrum``),
  ``X0_skip(k) = M(k) + a S (a^2 S + s^2 I)^{-1} (X_t(k) - a M(k))``. RGB channels (and latent
  channels) are strongly correlated, which the per-channel ``wiener`` filter cannot use; the mean
  image is known exactly, so it costs no error. With ``S = V diag(lambda) V^T`` the filter is
  ``V diag(a lambda / (a^2 lambda + s^2)) V^T`` and its x0 error per coefficient
  ``sum_c s^2 lambda_c / (a^2 lambda_c + s^2)``.

In both preconditioned modes the skip is converted to the target (``eps_skip = (x_t - a
x0_skip) / s``, ``v_skip = a eps_skip - s x0_skip``), ``c_in = 1 / sqrt(a^2 m + s^2)`` scales
``x_t`` to unit variance (``m`` the mean power per pixel) and ``c_out`` is the standard deviation
of the linear denoiser's error in target units (for x0: ``sqrt(mean_k P s^2 / (a^2 P + s^2))``;
eps multiplies it by ``a / s``, v by ``1 / s``), so ``F``'s regression target has about unit
variance at every t. Training weights each sample's target-space squared error by
``1 / c_out^2`` (EDM's lambda), i.e. it regresses ``F`` on the normalised residual; validation
losses stay unweighted target-space MSE, comparable across modes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# ring_count and PRECONDITIONINGS are re-exported (the rings live in memekit.space.rings, the modes in the spec)
from .rings import ring_count as ring_count
from .rings import ring_counts, ring_index
from .spec import PRECONDITIONINGS as PRECONDITIONINGS


def coefficient_power(spectrum: np.ndarray, size: int) -> np.ndarray:
    """Per-ring power ``(C, K)`` -> per-coefficient power ``(C, size, size)`` on the FFT grid."""
    return np.asarray(spectrum, dtype=np.float64)[:, ring_index(size)]


class Preconditioner:
    """The skip, ``c_in`` and ``c_out`` of one :class:`~memekit.space.spec.DiffusionSpec` at one
    image size, tabulated for every t (float64, turned into float32 tensors per device)."""

    def __init__(self, mode: str, prediction: str, alpha_bar: np.ndarray, resolution: int, channels: int,
                 data_std: float | None = None, data_spectrum: np.ndarray | None = None,
                 data_mean: np.ndarray | None = None, data_cross_spectrum: np.ndarray | None = None) -> None:
        self.mode, self.prediction, self.resolution = mode, prediction, resolution
        ab = np.asarray(alpha_bar, dtype=np.float64)
        self._cache: dict[tuple[str, torch.device], torch.Tensor] = {}
        if mode == "colour":
            self._init_colour(ab, resolution, float(data_std), np.asarray(data_mean, dtype=np.float64),
                              np.asarray(data_cross_spectrum, dtype=np.float64))
            return
        a2, s2 = ab[:, None, None, None], 1.0 - ab[:, None, None, None]  # (T, 1, 1, 1)
        if mode == "wiener":
            power = coefficient_power(np.asarray(data_spectrum, dtype=np.float64), resolution)[None]  # (1,C,R,R)
        else:
            power = np.full((1, channels, 1, 1), float(data_std) ** 2)
        mean_power = float(power.mean())
        residual_x0 = (power * s2 / (a2 * power + s2)).mean(axis=(1, 2, 3))  # (T,)
        a, s = np.sqrt(ab), np.sqrt(1.0 - ab)
        scale = a / s if prediction == "eps" else 1.0 / s
        self._tables = {"c_in": 1.0 / np.sqrt(ab * mean_power + (1.0 - ab)),
                        "c_out": np.sqrt(residual_x0) * scale}
        gain = np.sqrt(a2) * power / (a2 * power + s2)  # (T, C or 1, R or 1, R or 1)
        if mode == "wiener":  # rfft2 keeps columns 0..R//2; the filter is real and symmetric in k
            gain = gain[..., : resolution // 2 + 1]
        self._gain = gain.reshape(len(ab), *gain.shape[1:])

    def _init_colour(self, ab: np.ndarray, resolution: int, data_std: float, mean: np.ndarray,
                     cross: np.ndarray) -> None:
        eigenvalues, vectors = np.linalg.eigh(cross)  # (K, C), (K, C, C): S_r = V diag(lambda) V^T
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        a2, s2 = ab[:, None, None], 1.0 - ab[:, None, None]  # (T, 1, 1)
        per_ring = (s2 * eigenvalues[None] / (a2 * eigenvalues[None] + s2)).sum(axis=2)  # (T, K)
        counts = ring_counts(resolution)
        residual_x0 = per_ring @ counts / (resolution**2 * cross.shape[1])  # (T,)
        a, s = np.sqrt(ab), np.sqrt(1.0 - ab)
        scale = a / s if self.prediction == "eps" else 1.0 / s
        self._tables = {"c_in": 1.0 / np.sqrt(ab * data_std**2 + (1.0 - ab)), "c_out": np.sqrt(residual_x0) * scale,
                        "a": a, "s2": 1.0 - ab}
        rings = ring_index(resolution)[:, : resolution // 2 + 1]  # the rfft2 half-plane
        self._colour = {"mean": mean, "vectors": vectors[rings], "eigenvalues": eigenvalues[rings]}  # (R,R',C,C/ C)

    def _colour_tensor(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self._colour[name], dtype=torch.float32, device=device)
        return self._cache[key]

    def _colour_x0(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``mu + irfft2(V diag(g) V^T rfft2(x_t - a mu))``, ``g = a lambda / (a^2 lambda + s^2)``."""
        a = self._table("a", t)[:, None, None, None]  # (B, 1, 1, 1)
        mean = self._colour_tensor("mean", x_t.device)  # (C, R, R)
        vectors = self._colour_tensor("vectors", x_t.device)  # (R, R', C, C)
        lam = self._colour_tensor("eigenvalues", x_t.device)  # (R, R', C)
        gain = a * lam[None] / (a.square() * lam[None] + self._table("s2", t)[:, None, None, None])  # (B, R, R', C)
        z = torch.fft.rfft2(x_t - a * mean, norm="ortho")  # (B, C, R, R')
        v = vectors.to(z.dtype)
        coeff = torch.einsum("ijdc,bdij->bcij", v, z) * gain.permute(0, 3, 1, 2)  # V^T z, scaled
        out = torch.einsum("ijcd,bdij->bcij", v, coeff)  # V (...)
        return mean + torch.fft.irfft2(out, s=x_t.shape[-2:], norm="ortho")

    def _table(self, name: str, t: torch.Tensor) -> torch.Tensor:
        key = (name, t.device)
        if key not in self._cache:
            values = self._gain if name == "gain" else self._tables[name]
            self._cache[key] = torch.as_tensor(values, dtype=torch.float32, device=t.device)
        return self._cache[key][t]

    def c_in(self, t: torch.Tensor) -> torch.Tensor:
        return self._table("c_in", t)[:, None, None, None]

    def c_out(self, t: torch.Tensor) -> torch.Tensor:
        return self._table("c_out", t)[:, None, None, None]

    def skip_x0(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The linear denoiser's estimate of x_0 (float32)."""
        x_t = x_t.float()
        if self.mode == "colour":
            return self._colour_x0(x_t, t)
        gain = self._table("gain", t)
        if self.mode != "wiener":
            return gain * x_t
        spectrum = torch.fft.rfft2(x_t, norm="ortho")
        return torch.fft.irfft2(spectrum * gain, s=x_t.shape[-2:], norm="ortho")

    def skip(self, x_t: torch.Tensor, t: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The linear denoiser's prediction in target units (eps or v)."""
        x0 = self.skip_x0(x_t, t)
        eps = (x_t.float() - a * x0) / s
        return eps if self.prediction == "eps" else a * eps - s * x0

    def apply(self, net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_t: torch.Tensor,
              t: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``skip + c_out F(c_in x_t, t)`` (float32)."""
        out = net(self.c_in(t) * x_t, t).float()
        return self.skip(x_t, t, a, s) + self.c_out(t) * out

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """EDM's lambda: ``1 / c_out^2`` per sample, shape (B,)."""
        return self._table("c_out", t).square().reciprocal()
