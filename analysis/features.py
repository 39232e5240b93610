"""Fourier analysis of feature maps: the relative log amplitude of Park & Kim (2022).

Park & Kim, "How do vision transformers work?" (ICLR 2022), Fig. 2 and their
``fourier_analysis`` code, which MEME uses to show that its experts' layers shift with t:

1. 2-D FFT of every feature map ``z (B, C, H, W)``;
2. log amplitude ``log(|Z| + eps)`` (``eps = 1e-6``), averaged over batch and channels;
3. read along the half-diagonal from DC to the highest frequency, ``(k, k)`` for
   ``k = 0..H//2``, i.e. angular frequency ``omega = 2 pi k / H`` from 0 to pi (reached for even H;
   reported as ``omega / pi``);
4. relative to DC: ``L(k) - L(0)``.

A layer's effect on frequencies is its curve minus the curve of the network input x_t (column
``delta``): an identity layer changes nothing (``delta = 0``), a low-pass layer (average pooling,
attention) makes ``delta`` negative at high frequency, a high-pass layer (convolution) positive.

Features are captured with forward hooks on named submodules (``model.named_modules()`` names) of
any ``nn.Module``; memekit experts (``ExpertUNet``, ``forward(x, t)``) default to their U-Net blocks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from memekit.space import Diffusion, ExpertUNet
from memekit.space.errors import MemekitError
from memekit.space.progress import progress_bar

LOG_EPS = 1e-6  # added to |Z| before the log, as in Park & Kim's code
INPUT_LAYER = "input"  # pseudo-layer name of the network input x_t


class FeatureError(MemekitError, ValueError):
    """A layer name or a captured feature cannot be analysed."""


def half_diagonal_frequency(size: int) -> np.ndarray:
    """``omega / pi = 2 k / size`` for ``k = 0..size//2`` (DC to pi for even sizes)."""
    return 2.0 * np.arange(size // 2 + 1) / size


def relative_log_amplitude(features: torch.Tensor) -> torch.Tensor:
    """``L(k) - L(0)`` along the half-diagonal, ``L = mean_{batch, channels} log(|FFT z| + eps)``.

    ``features``: ``(B, C, H, W)`` with ``H == W``; returns float64 ``(H//2 + 1,)`` on the CPU.
    """
    if features.ndim != 4 or features.shape[-1] != features.shape[-2]:
        raise FeatureError(f"feature maps must be (B, C, H, W) with H == W, got shape {tuple(features.shape)}")
    log_amp = torch.log(torch.fft.fft2(features.double()).abs() + LOG_EPS).mean(dim=(0, 1))  # (H, W)
    k = torch.arange(features.shape[-1] // 2 + 1)
    diagonal = log_amp[k, k]  # (k, k): DC, then towards (pi, pi)
    return (diagonal - diagonal[0]).cpu()


def default_layers(model: nn.Module) -> list[str]:
    """Layers analysed when none are named: an ExpertUNet's U-Net blocks and down/up-sampling
    convolutions in forward order (``down.*``, ``mid``, ``up.*``); any other model's top-level
    children."""
    if isinstance(model, ExpertUNet):
        names = [f"down.{i}" for i in range(len(model.down))] + ["mid"]
        return names + [f"up.{i}" for i in range(len(model.up))]
    return [name for name, _ in model.named_children()]


def _takes_time(model: nn.Module) -> bool:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def capture_features(model: nn.Module, layers: Sequence[str], run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules during ``run()`` (forward hooks, removed afterwards).

    A layer returning a tuple contributes its first tensor; a layer called twice keeps the last call.
    """
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise FeatureError(f"model has no layer {missing[0]!r}: use names from model.named_modules(), "
                           f"e.g. {', '.join(list(modules)[1:6])}")
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            tensor = output[0] if isinstance(output, tuple | list) else output
            if not isinstance(tensor, torch.Tensor):
                raise FeatureError(f"layer {name!r} returned {type(tensor).__name__}, not a tensor")
            captured[name] = tensor.detach()
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _curve_rows(name: str, depth: int, t: int, features: torch.Tensor, reference: torch.Tensor) -> list[dict]:
    if features.ndim != 4 or features.shape[-1] != features.shape[-2]:
        raise FeatureError(f"layer {name!r} gives shape {tuple(features.shape)}: only square (B, C, H, W) "
                           "feature maps can be analysed")
    curve = relative_log_amplitude(features).numpy()
    ref = reference.numpy()
    freq = half_diagonal_frequency(features.shape[-1])
    # compare with the input at the same normalised frequency (feature maps may be downsampled)
    ref_at = np.interp(freq, half_diagonal_frequency(2 * (len(ref) - 1)), ref)
    return [{"layer": name, "depth": depth, "t": t, "resolution": features.shape[-1], "frequency": f,
             "relative_log_amplitude": v, "delta": v - r} for f, v, r in zip(freq, curve, ref_at, strict=True)]


@torch.no_grad()
def feature_spectra(model: nn.Module, x0: torch.Tensor, diffusion: Diffusion, timesteps: Iterable[int],
                    layers: Sequence[str] | None = None, seed: int = 0, takes_time: bool | None = None,
                    progress: bool = False) -> pd.DataFrame:
    """Relative log amplitude of the chosen layers' feature maps for inputs ``x_t`` at each t.

    ``x0``: clean images ``(B, C, R, R)`` in [-1, 1] on the model's device; ``x_t = a_t x0 + s_t eps``
    with ``eps`` drawn from ``seed`` (the same noise at every t). ``takes_time``: call
    ``model(x_t, t)`` (default when ``forward`` has two positional arguments, as ExpertUNet) or
    ``model(x_t)``. Returns a tidy frame: ``layer, depth, t, resolution, frequency (omega / pi),
    relative_log_amplitude, delta`` (minus the input's curve); the input itself appears as layer
    ``"input"`` at depth 0, layer ``i`` of ``layers`` at depth ``i + 1``.
    """
    layers = list(layers) if layers is not None else default_layers(model)
    takes_time = _takes_time(model) if takes_time is None else takes_time
    generator = torch.Generator(device=x0.device).manual_seed(seed)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    rows: list[dict] = []
    for t in progress_bar(list(timesteps), progress=progress, desc="features", unit="t", leave=False):
        if not 0 <= t < diffusion.timesteps:
            raise FeatureError(f"time-step {t} is outside [0, {diffusion.timesteps})")
        t_batch = torch.full((x0.shape[0],), int(t), device=x0.device, dtype=torch.long)
        x_t = diffusion.q_sample(x0, t_batch, eps)
        args = (x_t, t_batch) if takes_time else (x_t,)
        captured = capture_features(model, layers, lambda args=args: model(*args))
        reference = relative_log_amplitude(x_t)
        rows += _curve_rows(INPUT_LAYER, 0, int(t), x_t, reference)
        for depth, name in enumerate(layers, start=1):
            if name not in captured:
                raise FeatureError(f"layer {name!r} was not called in the forward pass")
            rows += _curve_rows(name, depth, int(t), captured[name], reference)
    return pd.DataFrame(rows)
