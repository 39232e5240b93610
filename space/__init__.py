"""memekit.space: what can be built (specs, presets, expert U-Net, multi-expert model,
diffusion process and samplers, cost model). Depends on nothing else in memekit."""

from __future__ import annotations

from .cost import (
    SpecCost,
    check_spec,
    cost_table,
    count_flops,
    count_params,
    expert_macs,
    measure_latency,
    spec_cost,
)
from .diffusion import Diffusion, beta_schedule, ddim_timesteps, sample, sample_ddim, sample_ddpm
from .errors import MemekitError, SpecError
from .expert import ExpertUNet, InceptionMixer, build_expert
from .multi_expert import MultiExpert, SoftIntervalSampler
from .presets import PRESETS, get_preset, resolve_spec
from .spec import (
    DiffusionSpec,
    ExpertSpec,
    MemeSpec,
    intervals_from_boundaries,
    load_spec,
    save_spec,
    uniform_intervals,
)

__all__ = [
    "PRESETS", "Diffusion", "DiffusionSpec", "ExpertSpec", "ExpertUNet", "InceptionMixer", "MemeSpec",
    "MemekitError", "MultiExpert", "SoftIntervalSampler", "SpecCost", "SpecError", "beta_schedule",
    "build_expert", "check_spec", "cost_table", "count_flops", "count_params", "ddim_timesteps", "expert_macs", "get_preset",
    "intervals_from_boundaries", "load_spec", "measure_latency", "resolve_spec", "sample", "sample_ddim", "sample_ddpm",
    "save_spec", "spec_cost", "uniform_intervals",
]
