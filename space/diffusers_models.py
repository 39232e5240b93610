"""The expert U-Net and the routed multi-expert model as diffusers models (optional: needs diffusers).

:class:`MemeExpertModel` and :class:`MemeMultiExpertModel` are :class:`~memekit.space.expert.ExpertUNet`
and :class:`~memekit.space.multi_expert.MultiExpert` with diffusers' ``ModelMixin`` and
``ConfigMixin`` mixed in, so each round-trips through ``save_pretrained`` / ``from_pretrained``
(``config.json`` + ``diffusion_pytorch_model.safetensors``) on its own. They add no parameters and
change no constructor: the network is built by the memekit class, in the same order, from the same
spec, so a state dict of memekit's (a checkpoint's ``ema``, or one expert's part of it) loads into
them unchanged and training stays bit-identical (training never uses these classes).

The config is memekit's spec JSON: ``expert`` (:class:`~memekit.space.spec.ExpertSpec`),
``diffusion`` (:class:`~memekit.space.spec.DiffusionSpec`, including the preconditioning and the
``data_std`` / ``data_spectrum`` measured from the training data) and ``interval``, the expert's
``[start, end)`` time-steps; the multi-expert model's config is the whole ``spec``
(:class:`~memekit.space.spec.MemeSpec`).

``forward(sample, timestep)`` is diffusers' interface and returns the **prediction** (eps or v, as the
diffusion spec says), preconditioning included (:meth:`memekit.space.diffusion.Diffusion.predict`):
``skip(x_t) + c_out F(c_in x_t, t)``. The raw network ``F`` is the memekit class's forward
(``ExpertUNet.forward(model, x, t)``); memekit's own samplers take that raw network, so hand them a
:class:`~memekit.space.multi_expert.MultiExpert`, never these models.

This module is not imported by ``memekit.space``; importing it without diffusers raises an
``ImportError`` that says ``pip install memekit[diffusers]``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

try:
    # ModelMixin must be a name of this module: diffusers' pipeline loader finds a component's
    # load method by looking its base classes up in the component's module
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.utils import BaseOutput
except ImportError as err:  # pragma: no cover - exercised only without diffusers
    raise ImportError("memekit's diffusers models need diffusers: pip install memekit[diffusers]") from err

from .diffusion import Diffusion
from .errors import SpecError
from .expert import ExpertUNet
from .multi_expert import MultiExpert
from .spec import DiffusionSpec, ExpertSpec, MemeSpec

__all__ = ["MemeExpertModel", "MemeModelOutput", "MemeMultiExpertModel", "ModelMixin"]


@dataclass
class MemeModelOutput(BaseOutput):
    """``sample``: the model's prediction (eps or v), float32, shaped like the input."""

    sample: torch.Tensor


def _timestep_batch(timestep: Any, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar or (B,) time-step -> (B,) tensor; integer-valued ones as int64 (the preconditioner and
    the routing index tables by t)."""
    t = torch.as_tensor(timestep, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise SpecError(f"timestep must be a scalar or one value per sample ({batch}), got shape {tuple(t.shape)}")
    if t.is_floating_point() and torch.equal(t, t.round()):
        t = t.long()
    return t


def _own_memory(model: torch.nn.Module) -> torch.nn.Module:
    """Copy every parameter and buffer into memory of its own. diffusers leaves loaded weights in the
    safetensors file's memory map, at offsets that are not 64-byte aligned, and CPU kernels then round
    differently (about 1e-6); a copy computes exactly what memekit's own loading does."""
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.device.type != "meta":
                tensor.data = tensor.data.clone()
    return model


def _predict(diffusion: Diffusion, network: Any, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
    t = _timestep_batch(timestep, sample.shape[0], sample.device)
    if t.is_floating_point() and diffusion.spec.preconditioning != "none":
        raise SpecError(f"preconditioning {diffusion.spec.preconditioning!r} is tabulated at integer time-steps; "
                        "got fractional ones: use a scheduler with integer time-steps (e.g. the package's)")
    return diffusion.predict(network, sample, t)


class MemeExpertModel(ExpertUNet, ModelMixin, ConfigMixin):
    """One expert U-Net as a diffusers model (module docstring): config ``expert``, ``diffusion`` and
    ``interval``; ``forward(sample (B,C,H,W), timestep) -> MemeModelOutput(sample=prediction)``."""

    @register_to_config
    def __init__(self, expert: dict[str, Any], diffusion: dict[str, Any] | None = None,
                 interval: list[int] | tuple[int, int] | None = None) -> None:
        expert_spec = ExpertSpec.from_dict(dict(expert))
        diffusion_spec = DiffusionSpec.from_dict(dict(diffusion or {}))
        super().__init__(expert_spec)  # ExpertUNet builds the network exactly as memekit does
        self.diffusion = Diffusion(diffusion_spec)
        lo, hi = interval if interval is not None else (0, diffusion_spec.timesteps)
        if not 0 <= lo < hi <= diffusion_spec.timesteps:
            raise SpecError(f"expert interval [{lo}, {hi}) must lie in [0, {diffusion_spec.timesteps})")
        self.interval = (int(lo), int(hi))

    @classmethod
    def from_spec(cls, spec: MemeSpec, expert: int) -> MemeExpertModel:
        """Expert ``expert`` of ``spec`` (randomly initialised, as :func:`memekit.space.build_expert`)."""
        return cls(expert=spec.experts[expert].to_dict(), diffusion=spec.diffusion.to_dict(),
                   interval=list(spec.intervals[expert]))

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> MemeExpertModel:
        """diffusers' ``from_pretrained``, the weights then copied out of the file's memory map."""
        return _own_memory(super().from_pretrained(*args, **kwargs))

    def forward(self, sample: torch.Tensor, timestep: Any,
                return_dict: bool = True) -> MemeModelOutput | tuple[torch.Tensor]:
        """The prediction (eps or v) at ``sample`` = x_t, preconditioning included."""
        out = _predict(self.diffusion, super().forward, sample, timestep)
        return MemeModelOutput(sample=out) if return_dict else (out,)


class MemeMultiExpertModel(MultiExpert, ModelMixin, ConfigMixin):
    """The routed multi-expert model as a diffusers model: config ``spec`` (the MemeSpec JSON object);
    state-dict keys are :class:`MultiExpert`'s (``experts.N.*``), so a checkpoint's ``ema`` loads as is.
    ``forward(sample, timestep)`` routes each sample to the expert owning its t and returns the
    prediction, preconditioning included."""

    @register_to_config
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(MemeSpec.from_dict(dict(spec)))  # MultiExpert builds the experts exactly as memekit does
        self.diffusion = Diffusion(self.spec.diffusion)

    @classmethod
    def from_spec(cls, spec: MemeSpec) -> MemeMultiExpertModel:
        """The multi-expert model of ``spec`` (randomly initialised, as :class:`MultiExpert`)."""
        return cls(spec=spec.to_dict())

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> MemeMultiExpertModel:
        """diffusers' ``from_pretrained``, the weights then copied out of the file's memory map."""
        return _own_memory(super().from_pretrained(*args, **kwargs))

    def forward(self, sample: torch.Tensor, timestep: Any,
                return_dict: bool = True) -> MemeModelOutput | tuple[torch.Tensor]:
        """The prediction (eps or v) at ``sample`` = x_t, each sample answered by its t's expert."""
        out = _predict(self.diffusion, super().forward, sample, timestep)
        return MemeModelOutput(sample=out) if return_dict else (out,)
