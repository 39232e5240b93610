"""memekit.space: what can be built (specs, presets, expert U-Net, multi-expert model,
diffusion process and samplers, cost model). Depends on nothing else in memekit.

The names below are imported from their modules when first used (PEP 562), so that
``import memekit.space.errors`` (or the spec and preset tables, which are torch-free) does not
import torch: the command line answers ``--help`` without it.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of memekit.space that defines it
_MODULES = {
    "SpecCost": "cost", "check_spec": "cost", "cost_table": "cost", "spec_cost": "cost",
    "count_flops": "counting", "count_params": "counting", "expert_macs": "counting", "measure_latency": "counting",
    "Diffusion": "diffusion", "beta_schedule": "diffusion", "sample": "diffusion", "sample_ddim": "diffusion",
    "sample_ddpm": "diffusion",
    "ddim_timesteps": "trajectory",
    "MemekitError": "errors", "SpecError": "errors",
    "ExpertUNet": "expert", "InceptionMixer": "expert", "build_expert": "expert",
    "MultiExpert": "multi_expert", "SoftIntervalSampler": "multi_expert",
    "PRESETS": "presets", "get_preset": "presets", "resolve_spec": "presets",
    "DiffusionSpec": "spec", "ExpertSpec": "spec", "MemeSpec": "spec", "intervals_from_boundaries": "spec",
    "load_spec": "spec", "save_spec": "spec", "uniform_intervals": "spec",
}

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})

