"""The sampling trajectory: which time-steps an S-step sampler visits and which expert serves each.

Torch-free (numpy only), so that costs and the command line's defaults need no torch:
:func:`ddim_timesteps` (the DDIM grid), :func:`trajectory_steps` (steps per expert),
:data:`SAMPLERS` (the samplers of :func:`memekit.space.diffusion.sample`) and the trajectory
defaults a study and the spectral prior share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import SpecError

if TYPE_CHECKING:
    from .spec import MemeSpec

SAMPLERS = ("ddim", "ddpm")
DEFAULT_SAMPLING_STEPS = 50  # DDIM steps of the trajectory a study costs (SearchConfig.sampling_steps)
DEFAULT_MIN_STEPS = 3  # sampling steps every interval holds at least (priors.min_length_for_steps)


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """Descending time-steps of an S-step trajectory, evenly spaced from T-1 to 0 (both kept)."""
    if not 1 <= steps <= timesteps:
        raise SpecError(f"sampling steps must be in [1, {timesteps}], got {steps}")
    if steps == 1:
        return [timesteps - 1]
    return [int(v) for v in np.round(np.linspace(timesteps - 1, 0, steps))]


def trajectory_steps(spec: MemeSpec, sampling_steps: int) -> list[int]:
    """How many of the S DDIM steps each expert serves (the step's t picks the expert)."""
    counts = [0] * spec.n_experts
    for t in ddim_timesteps(spec.diffusion.timesteps, sampling_steps):
        counts[spec.expert_for(t)] += 1
    return counts
