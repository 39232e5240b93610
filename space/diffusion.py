"""The discrete-time diffusion process, its training loss and the DDPM / DDIM samplers.

Notation (Ho et al. 2020; Song et al. 2021): ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``,
``x_t = a_t x_0 + s_t eps`` with ``a_t = sqrt(alpha_bar_t)``, ``s_t = sqrt(1 - alpha_bar_t)``,
t in {0, ..., T-1}. The model predicts ``eps`` or ``v = a_t eps - s_t x_0`` (Salimans & Ho 2022),
either directly (preconditioning ``none``) or as a linear denoiser's prediction plus a scaled
network residual (``edm``, ``wiener``: :mod:`memekit.space.precondition`);
:meth:`Diffusion.predict` is the one place where a network's output becomes the prediction.

Samplers are plain functions over a ``denoiser(x_t, t) -> prediction``; a
:class:`~memekit.space.multi_expert.MultiExpert` is such a denoiser, so the step's t picks the
expert.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .errors import SpecError
from .precondition import Preconditioner
from .progress import progress_bar
from .rings import ring_count
from .spec import DiffusionSpec
from .trajectory import SAMPLERS as SAMPLERS  # re-exported: the samplers' names are torch-free
from .trajectory import ddim_timesteps

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def beta_schedule(name: str, timesteps: int) -> np.ndarray:
    """Betas (float64, shape (T,)).

    - ``linear-ldm``: LDM's "linear" schedule, ``beta = linspace(sqrt(0.0015), sqrt(0.0195), T)^2``
      (diffusers' ``scaled_linear``).
    - ``linear-ddpm``: DDPM's ``linspace(1e-4, 0.02, T)``, both ends scaled by 1000/T (Nichol &
      Dhariwal 2021) so that any T keeps alpha_bar_T near zero.
    - ``cosine``: ``alpha_bar(t) = cos^2(((t/T) + 0.008) / 1.008 * pi/2)``, betas clipped to 0.999.
    """
    T = timesteps
    if name == "linear-ldm":
        return np.linspace(math.sqrt(0.0015), math.sqrt(0.0195), T, dtype=np.float64) ** 2
    if name == "linear-ddpm":
        scale = 1000.0 / T
        return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    if name == "cosine":
        s = 0.008
        steps = np.arange(T + 1, dtype=np.float64) / T
        f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
    raise SpecError(f"unknown schedule {name!r}: choose linear-ldm, linear-ddpm or cosine")


class Diffusion:
    """Schedule tensors plus q_sample, the training target/loss and prediction conversions."""

    def __init__(self, spec: DiffusionSpec) -> None:
        self.spec = spec
        self.timesteps = spec.timesteps
        self.prediction = spec.prediction
        self.betas = beta_schedule(spec.schedule, spec.timesteps)
        self.alpha_bar = np.cumprod(1.0 - self.betas)  # (T,) float64
        self._tensors: dict[torch.device, torch.Tensor] = {}
        self._preconditioners: dict[tuple[int, int], Preconditioner] = {}

    def preconditioner(self, x: torch.Tensor) -> Preconditioner | None:
        """The :class:`Preconditioner` for images shaped like ``x`` (None for ``none``)."""
        spec = self.spec
        if spec.preconditioning == "none":
            return None
        channels, size = int(x.shape[1]), int(x.shape[-1])
        if (channels, size) not in self._preconditioners:
            spectrum = None if spec.data_spectrum is None else np.asarray(spec.data_spectrum)
            if spectrum is not None and spectrum.shape != (channels, ring_count(size)):
                raise SpecError(f"the diffusion data_spectrum holds {spectrum.shape[0]} channel(s) x "
                                f"{spectrum.shape[1]} rings, but the images are {channels} x {size} px "
                                f"({ring_count(size)} rings): measure it at this resolution")
            mean = None if spec.data_mean is None else np.asarray(spec.data_mean)
            cross = None if spec.data_cross_spectrum is None else np.asarray(spec.data_cross_spectrum)
            if mean is not None and (mean.shape != (channels, size, size)
                                     or cross.shape != (ring_count(size), channels, channels)):
                raise SpecError(f"the diffusion's colour statistics are for {mean.shape[0]} channel(s) of "
                                f"{mean.shape[-1]} px, but the images are {channels} x {size} px: measure them at "
                                "this resolution")
            self._preconditioners[channels, size] = Preconditioner(
                spec.preconditioning, spec.prediction, self.alpha_bar, size, channels, spec.data_std, spectrum,
                mean, cross)
        return self._preconditioners[channels, size]

    def predict(self, denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's prediction (eps or v) at ``x_t``: the network's output as is (``none``) or
        ``skip + c_out F(c_in x_t)`` (preconditioned)."""
        pre = self.preconditioner(x_t)
        if pre is None:
            return denoiser(x_t, t)
        a, s = self.coefficients(t)
        return pre.apply(denoiser, x_t, t, a, s)

    def _alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        key = t.device
        if key not in self._tensors:
            self._tensors[key] = torch.as_tensor(self.alpha_bar, device=key)
        return self._tensors[key][t]

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_t, s_t)`` as float32 tensors of shape (B, 1, 1, 1)."""
        ab = self._alpha_bar_at(t)
        a, s = ab.sqrt(), (1.0 - ab).sqrt()
        return a.float()[:, None, None, None], s.float()[:, None, None, None]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = a_t x_0 + s_t eps``."""
        a, s = self.coefficients(t)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network regresses: ``eps`` or ``v = a_t eps - s_t x_0``."""
        if self.prediction == "eps":
            return noise
        a, s = self.coefficients(t)
        return a * noise - s * x0

    def split_prediction(self, out: torch.Tensor, x_t: torch.Tensor,
                         t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A prediction (eps or v, see :meth:`predict`) -> ``(x0_hat, eps_hat)``."""
        a, s = self.coefficients(t)
        out = out.float()
        if self.prediction == "eps":
            return (x_t - s * out) / a, out
        return a * x_t - s * out, s * x_t + a * out

    def loss(self, denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             weighted: bool = False) -> torch.Tensor:
        """Per-sample MSE between prediction and target, shape (B,). ``weighted``: times the
        training weight of a preconditioned model (EDM's ``1 / c_out^2``; 1 for ``none``)."""
        x_t = self.q_sample(x0, t, noise)
        err = self.predict(denoiser, x_t, t).float() - self.target(x0, t, noise)
        loss = err.square().flatten(1).mean(1)
        pre = self.preconditioner(x_t) if weighted else None
        return loss if pre is None else loss * pre.loss_weight(t)


def _noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """Gaussian noise drawn with a CPU generator (same samples on every device), then moved."""
    return torch.randn(shape, generator=generator).to(device)


def _eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (x_t - a * x0) / s


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, diffusion: Diffusion, shape: tuple[int, ...], steps: int = 50,
                eta: float = 0.0, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                clip_x0: bool = True, progress: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) over ``ddim_timesteps(T, steps)``; eta=1 with all T steps is
    DDPM ancestral sampling. The last step goes to ``alpha_bar = 1`` (the clean image)."""
    ts = ddim_timesteps(diffusion.timesteps, steps)
    x = _noise(shape, generator, device)
    for i, t in enumerate(progress_bar(ts, progress=progress, desc="ddim", leave=False)):
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        ab = float(diffusion.alpha_bar[t])
        ab_prev = float(diffusion.alpha_bar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        x0, eps = diffusion.split_prediction(diffusion.predict(denoiser, x, t_batch), x, t_batch)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = _eps_from_x0(x, x0, math.sqrt(ab), math.sqrt(1.0 - ab))
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _noise(shape, generator, device)
    return x


@torch.no_grad()
def sample_ddpm(denoiser: Denoiser, diffusion: Diffusion, shape: tuple[int, ...],
                generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                clip_x0: bool = True, progress: bool = False) -> torch.Tensor:
    """DDPM ancestral sampling over all T steps with the posterior q(x_{t-1} | x_t, x_0) of the
    predicted x_0: mean ``c0 x0 + ct x_t`` and variance ``beta_tilde_t`` (Ho et al. 2020, eq. 7)."""
    x = _noise(shape, generator, device)
    betas, ab_all = diffusion.betas, diffusion.alpha_bar
    for t in progress_bar(range(diffusion.timesteps - 1, -1, -1), progress=progress, desc="ddpm", leave=False):
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        ab, ab_prev = float(ab_all[t]), (float(ab_all[t - 1]) if t > 0 else 1.0)
        beta = float(betas[t])
        x0, _ = diffusion.split_prediction(diffusion.predict(denoiser, x, t_batch), x, t_batch)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        c0 = beta * math.sqrt(ab_prev) / (1.0 - ab)
        ct = (1.0 - ab_prev) * math.sqrt(1.0 - beta) / (1.0 - ab)
        x = c0 * x0 + ct * x
        if t > 0:
            var = beta * (1.0 - ab_prev) / (1.0 - ab)
            x = x + math.sqrt(var) * _noise(shape, generator, device)
    return x


def sample(denoiser: Denoiser, diffusion: Diffusion, shape: tuple[int, ...], sampler: str = "ddim",
           steps: int = 50, eta: float = 0.0, **kwargs) -> torch.Tensor:
    """Dispatch to :func:`sample_ddim` or :func:`sample_ddpm` (which always takes all T steps)."""
    if sampler == "ddim":
        return sample_ddim(denoiser, diffusion, shape, steps=steps, eta=eta, **kwargs)
    if sampler == "ddpm":
        return sample_ddpm(denoiser, diffusion, shape, **kwargs)
    raise SpecError(f"unknown sampler {sampler!r}: choose ddim or ddpm")
