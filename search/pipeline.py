"""A trained MEME model as a diffusers pipeline: :class:`MemePipeline` and its scheduler (needs diffusers).

A folder written by ``memekit package`` (:mod:`memekit.search.package`) loads with

    from memekit.search.pipeline import MemePipeline
    pipe = MemePipeline.from_pretrained("OUT")
    images = pipe(batch_size=16, num_inference_steps=50, seed=0).images

Its components are ``expert_0 .. expert_{N-1}`` (:class:`~memekit.space.diffusers_models.MemeExpertModel`,
lowest noise first; each knows its interval ``[start, end)`` of time-steps), ``scheduler``
(:class:`MemeDDIMScheduler`) and, for a model of autoencoder latents, an optional ``vae`` that the
user passes (``latent`` in the pipeline config records which autoencoder made the latents, and the
per-channel ``shift`` and ``scale`` that map them to unit scale). Each step's time-step picks the
expert that owns it, as in :class:`~memekit.space.multi_expert.MultiExpert`.

:class:`MemeDDIMScheduler` is diffusers' ``DDIMScheduler`` config (``scheduler_config.json`` loads in
``DDIMScheduler`` too) stepping as memekit's :func:`~memekit.space.diffusion.sample_ddim` does:
time-steps ``round(linspace(T-1, 0, S))`` and each step goes to the **next listed** time-step (diffusers'
DDIM goes to ``t - T // S``), the last one to ``alpha_bar = 1``; clipping the predicted x_0 to
[-1, 1] recomputes eps from it; the schedule is memekit's float64 one. With it, the pipeline samples
what memekit's sampler samples at the same noise: ``seed=S`` (and ``sample_batch=B``) draws batch k
of B images from ``torch.Generator().manual_seed(S + k)``, exactly as ``memekit sample --seed S
--batch B``; a ``generator`` drives the whole batch as one memekit batch. Other diffusers schedulers
(``pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)``) run too, without that
equality.

There are at most :data:`MAX_EXPERTS` expert slots: diffusers names a pipeline's components in its
constructor, so the number is fixed; unused slots are saved as ``[null, null]``.
"""

from __future__ import annotations

import inspect
import math
from functools import cached_property
from typing import Any

import numpy as np
import torch

try:
    # SchedulerMixin must be a name of this module: diffusers' pipeline loader finds a component's
    # load method by looking its base classes up in the component's module
    from diffusers import DDIMScheduler, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as err:  # pragma: no cover - exercised only without diffusers
    raise ImportError("memekit's diffusers pipeline needs diffusers: pip install memekit[diffusers]") from err

from memekit.analysis.autoencoders import Autoencoder
from memekit.analysis.data import to_uint8
from memekit.analysis.latents import normalisation_from_record
from memekit.space.diffusers_models import MemeExpertModel
from memekit.space.diffusion import Diffusion, ddim_timesteps
from memekit.space.errors import SpecError
from memekit.space.spec import DiffusionSpec

__all__ = ["MAX_EXPERTS", "AutoencoderAdapter", "MemeDDIMScheduler", "MemePipeline", "SchedulerMixin",
           "diffusion_spec_of", "scheduler_config"]

MAX_EXPERTS = 8
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# LDM's "linear" schedule as memekit writes it (space/diffusion.py beta_schedule: linear-ldm)
LDM_BETAS = (0.0015, 0.0195)
# DDPM's linear schedule at T = 1000; memekit scales both ends by 1000 / T
DDPM_BETAS = (1e-4, 0.02)
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}


# ---- schedule <-> scheduler config --------------------------------------------------------------
def scheduler_config(diffusion: DiffusionSpec) -> dict[str, Any]:
    """diffusers ``DDIMScheduler`` arguments for memekit's process: ``linear-ldm`` is ``scaled_linear``
    with LDM's betas, ``linear-ddpm`` is ``linear`` with DDPM's betas scaled by 1000/T, ``cosine`` is
    ``squaredcos_cap_v2``; memekit's DDIM clips x_0 to [-1, 1] and ends at ``alpha_bar = 1``."""
    T = diffusion.timesteps
    if diffusion.schedule == "linear-ldm":
        schedule = dict(beta_schedule="scaled_linear", beta_start=LDM_BETAS[0], beta_end=LDM_BETAS[1])
    elif diffusion.schedule == "linear-ddpm":
        scale = 1000.0 / T  # the expression of memekit's beta_schedule, so the floats are its own
        schedule = dict(beta_schedule="linear", beta_start=scale * DDPM_BETAS[0], beta_end=scale * DDPM_BETAS[1])
    else:
        schedule = dict(beta_schedule="squaredcos_cap_v2")
    return dict(num_train_timesteps=T, **schedule, prediction_type=PREDICTION_TYPES[diffusion.prediction],
                clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0,
                timestep_spacing="linspace", thresholding=False, rescale_betas_zero_snr=False)


def diffusion_spec_of(config: Any) -> DiffusionSpec:
    """The memekit process (T, schedule, prediction) of a scheduler config; one-line :class:`SpecError`
    for a config :func:`scheduler_config` does not write."""
    T = int(config["num_train_timesteps"])
    name, start, end = config["beta_schedule"], config.get("beta_start"), config.get("beta_end")
    prediction = {v: k for k, v in PREDICTION_TYPES.items()}.get(config["prediction_type"])
    schedules = {"scaled_linear": ("linear-ldm", LDM_BETAS),
                 "linear": ("linear-ddpm", tuple(1000.0 / T * b for b in DDPM_BETAS)),
                 "squaredcos_cap_v2": ("cosine", None)}
    if name not in schedules or prediction is None or config.get("trained_betas") is not None:
        raise SpecError(f"scheduler config ({name}, {config['prediction_type']}) is not one of memekit's schedules: "
                        "write it with memekit.search.pipeline.scheduler_config")
    schedule, betas = schedules[name]
    if betas is not None and not np.allclose((start, end), betas, rtol=1e-12, atol=0):
        raise SpecError(f"{name} betas {start}..{end} are not memekit's {schedule} ({betas[0]}..{betas[1]})")
    return DiffusionSpec(timesteps=T, schedule=schedule, prediction=prediction)


class MemeDDIMScheduler(DDIMScheduler):
    """DDIM as memekit samples it (module docstring); the config is ``DDIMScheduler``'s."""

    @cached_property
    def diffusion(self) -> Diffusion:
        """memekit's process for this config (float64 schedule, prediction conversions)."""
        return Diffusion(diffusion_spec_of(self.config))

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """memekit's :func:`~memekit.space.diffusion.ddim_timesteps`: ``round(linspace(T-1, 0, S))``."""
        self.num_inference_steps = num_inference_steps
        steps = ddim_timesteps(self.config.num_train_timesteps, num_inference_steps)
        self.timesteps = torch.tensor(steps, dtype=torch.long, device=device)

    def _next_alpha_bar(self, t: int) -> float:
        """alpha_bar of the step after ``t`` in :attr:`timesteps` (1, or alpha_bar_0, after the last)."""
        steps = self.timesteps.tolist()
        if t not in steps:
            raise SpecError(f"time-step {t} is not one of this trajectory's ({len(steps)} steps): call set_timesteps")
        i = steps.index(t)
        if i + 1 < len(steps):
            return float(self.diffusion.alpha_bar[steps[i + 1]])
        return 1.0 if self.config.set_alpha_to_one else float(self.diffusion.alpha_bar[0])

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             eta: float = 0.0, use_clipped_model_output: bool | None = None,
             generator: torch.Generator | list[torch.Generator] | None = None,
             variance_noise: torch.Tensor | None = None,
             return_dict: bool = True) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step (Song et al. 2021, eq. 12), the arithmetic of memekit's ``sample_ddim``; a clipped
        x_0 always gives the eps of the step (``use_clipped_model_output`` may only be None or True)."""
        if use_clipped_model_output is False and self.config.clip_sample:
            raise SpecError("memekit's DDIM takes eps from the clipped x_0: use_clipped_model_output=False is not "
                            "supported (use diffusers' DDIMScheduler for that)")
        t = int(timestep)
        ab, ab_prev = float(self.diffusion.alpha_bar[t]), self._next_alpha_bar(t)
        t_batch = torch.full((sample.shape[0],), t, device=sample.device, dtype=torch.long)
        x0, eps = self.diffusion.split_prediction(model_output, sample, t_batch)
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            x0 = x0.clamp(-limit, limit)
            eps = (sample - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        sigma = eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
        prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(sample.shape, generator=generator, device=sample.device,
                                              dtype=sample.dtype)
            prev = prev + sigma * variance_noise
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev, x0)


# ---- the pipeline ---------------------------------------------------------------------------------
class AutoencoderAdapter(torch.nn.Module):
    """A memekit autoencoder (:class:`~memekit.analysis.autoencoders.Autoencoder`, e.g. TAEF2) as a
    pipeline's ``vae``: its ``decode``, and the ``device`` and ``dtype`` that diffusers asks of every
    component. diffusers' own autoencoders need no adapter."""

    def __init__(self, autoencoder: Autoencoder) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images in [-1, 1]."""
        return self.autoencoder.decode(latents)


class MemePipeline(DiffusionPipeline):
    """Unconditional sampling from a multi-expert model: each step's t picks its expert (module docstring).

    ``vae``: a diffusers autoencoder, or memekit's (wrapped in :class:`AutoencoderAdapter`).
    ``latent``: for a model of autoencoder latents, memekit's record of them (``autoencoder``: kind,
    folder, weight fingerprint; ``normalisation``: per-channel ``shift`` and ``scale``, decoded as
    ``vae.decode(x * scale + shift)``); None for a pixel model.
    """

    _optional_components = [f"expert_{n}" for n in range(1, MAX_EXPERTS)] + ["vae"]

    def __init__(self, scheduler: SchedulerMixin, expert_0: MemeExpertModel,
                 expert_1: MemeExpertModel | None = None, expert_2: MemeExpertModel | None = None,
                 expert_3: MemeExpertModel | None = None, expert_4: MemeExpertModel | None = None,
                 expert_5: MemeExpertModel | None = None, expert_6: MemeExpertModel | None = None,
                 expert_7: MemeExpertModel | None = None, vae: torch.nn.Module | None = None,
                 latent: dict[str, Any] | None = None) -> None:
        super().__init__()
        experts = (expert_0, expert_1, expert_2, expert_3, expert_4, expert_5, expert_6, expert_7)
        if isinstance(vae, Autoencoder):
            vae = AutoencoderAdapter(vae)
        self.register_modules(scheduler=scheduler, vae=vae, **{f"expert_{n}": e for n, e in enumerate(experts)})
        self.register_to_config(latent=latent)

    # ---- routing ---------------------------------------------------------------------------------
    @property
    def experts(self) -> list[MemeExpertModel]:
        """The experts, lowest noise first."""
        slots = [getattr(self, f"expert_{n}", None) for n in range(MAX_EXPERTS)]
        count = next((n for n, e in enumerate(slots) if e is None), MAX_EXPERTS)
        if any(e is not None for e in slots[count:]):
            raise SpecError(f"expert_{count} is missing but a later expert is set: experts must fill expert_0 .. "
                            "expert_{N-1}")
        return slots[:count]

    @property
    def intervals(self) -> list[tuple[int, int]]:
        """Each expert's time-steps ``[start, end)``, checked to cover ``[0, T)`` once in order."""
        T = int(self.scheduler.config.num_train_timesteps)
        intervals = [tuple(e.interval) for e in self.experts]
        ends = [0] + [hi for _, hi in intervals]
        if [lo for lo, _ in intervals] != ends[:-1] or ends[-1] != T:
            raise SpecError(f"the experts' intervals {intervals} do not cover the scheduler's [0, {T}) once, in order")
        return intervals

    @property
    def boundary_ratios(self) -> list[float]:
        """Wan 2.2's ``boundary_ratio`` of each hand-over: the expert above owns ``t >= ratio * T``
        (SDXL's ``denoising_end`` of the expert above is ``1 - ratio``)."""
        T = self.scheduler.config.num_train_timesteps
        return [lo / T for lo, _ in self.intervals[1:]]

    def expert_for(self, t: float) -> MemeExpertModel:
        """The expert whose interval holds time-step ``t``."""
        for expert, (lo, hi) in zip(self.experts, self.intervals, strict=True):
            if lo <= t < hi:
                return expert
        raise SpecError(f"time-step {t} is outside [0, {self.scheduler.config.num_train_timesteps})")

    # ---- sampling --------------------------------------------------------------------------------
    def _step_kwargs(self, generator: Any, eta: float) -> dict[str, Any]:
        """``eta`` and ``generator`` for the schedulers whose ``step`` takes them (as diffusers' pipelines)."""
        accepted = inspect.signature(self.scheduler.step).parameters
        return {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepted}

    def _denoise(self, shape: tuple[int, ...], steps: int, eta: float, generator: Any,
                 latents: torch.Tensor | None) -> torch.Tensor:
        """One trajectory from noise ``x_T`` (``latents``, or drawn from ``generator``) to x_0."""
        device = self._execution_device
        self.scheduler.set_timesteps(steps, device=device)
        x = latents.to(device) if latents is not None else randn_tensor(shape, generator=generator, device=device,
                                                                          dtype=torch.float32)
        x = x * self.scheduler.init_noise_sigma
        extra = self._step_kwargs(generator, eta)
        for t in self.progress_bar(self.scheduler.timesteps):
            expert = self.expert_for(float(t))
            model_input = self.scheduler.scale_model_input(x, t)
            out = expert(model_input.to(expert.dtype), t).sample
            x = self.scheduler.step(out, t, x, **extra).prev_sample
        return x

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> images in [-1, 1] (a latent model's through ``vae``)."""
        if self.config.latent is None:
            return x
        if self.vae is None:
            ae = (self.config.latent.get("autoencoder") or {}).get("path", "its autoencoder")
            raise SpecError(f"this model samples latents: pass vae= (the autoencoder in {ae}) to from_pretrained, "
                            "or output_type='latent'")
        weight = next(self.vae.parameters())
        z = normalisation_from_record(self.config.latent).invert(x.float()).to(weight.device, weight.dtype)
        out = self.vae.decode(z)
        return getattr(out, "sample", out).float().clamp(-1.0, 1.0)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 50,
                 generator: torch.Generator | list[torch.Generator] | None = None, eta: float = 0.0,
                 output_type: str = "pil", return_dict: bool = True, latents: torch.Tensor | None = None,
                 seed: int | None = None, sample_batch: int = 64) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images with ``num_inference_steps`` steps (DDIM ``eta``: 0 deterministic).

        Noise: ``seed`` (memekit's: batch k of ``sample_batch`` images from a CPU generator seeded
        ``seed + k``, as ``memekit sample --seed --batch``), else ``generator`` (diffusers': one
        generator for the whole batch, or one per image), else ``latents`` (x_T itself).
        ``output_type``: ``pil`` (quantised as memekit's PNGs), ``np`` (float NHWC in [0, 1]), ``pt``
        (float NCHW in [0, 1]) or ``latent`` (the model-space samples, undecoded, float NCHW).
        """
        if output_type not in OUTPUT_TYPES:
            raise SpecError(f"unknown output_type {output_type!r}: choose one of {', '.join(OUTPUT_TYPES)}")
        if seed is not None and (generator is not None or latents is not None):
            raise SpecError("give the noise one way: seed (memekit's batches), generator or latents")
        if batch_size < 1 or sample_batch < 1:
            raise SpecError(f"batch_size and sample_batch must be >= 1, got {batch_size} and {sample_batch}")
        e = self.experts[0].spec
        shape = (e.image_channels, e.resolution, e.resolution)
        if latents is not None and tuple(latents.shape) != (batch_size, *shape):
            raise SpecError(f"latents must have shape {(batch_size, *shape)} (batch_size x the experts' input), "
                            f"got {tuple(latents.shape)}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise SpecError(f"give one generator per image: {len(generator)} generators for batch_size {batch_size}")
        if seed is None:
            chunks = [(batch_size, generator)]
        else:
            chunks = [(min(sample_batch, batch_size - k * sample_batch), torch.Generator().manual_seed(seed + k))
                      for k in range(math.ceil(batch_size / sample_batch))]
        x = torch.cat([self._denoise((n, *shape), num_inference_steps, eta, gen, latents) for n, gen in chunks])
        self.maybe_free_model_hooks()
        if output_type == "latent":
            images: Any = x
        else:
            images = self._images(self._decode(x), output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @staticmethod
    def _images(x: torch.Tensor, output_type: str) -> Any:
        """Images in [-1, 1] -> ``output_type`` (``pil`` rounds exactly as memekit's ``to_uint8``)."""
        if output_type == "pil":
            from PIL import Image

            return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in to_uint8(x)]
        images = (x.float() / 2 + 0.5).clamp(0.0, 1.0)
        return images.cpu().permute(0, 2, 3, 1).numpy() if output_type == "np" else images
