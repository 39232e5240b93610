"""Cost model: parameters, MACs per forward, MACs of a sampling trajectory.

Counts come from :mod:`memekit.space.counting` (torch's ``FlopCounterMode`` plus a formula for
the CPU flash-attention kernel; **MACs = FLOPs / 2** for one sample, batch 1). This module itself
is torch-free: :func:`check_spec` of a preset's experts reads :data:`PRESET_EXPERT_COSTS` (the
counts of every preset at 32 and 64 px, recounted by ``tests/space/test_space_check.py``), so
``memekit space check PRESET`` answers without importing torch; other specs are counted.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from .errors import SpecError
from .spec import ExpertSpec, MemeSpec
from .trajectory import trajectory_steps

COUNTER_NAME = "torch FlopCounterMode + SDPA formula (MACs = FLOPs/2)"
_COUNTING = ("SDPA_FLOP_MAPPING", "count_flops", "count_params", "expert_macs", "measure_latency")


def __getattr__(name: str) -> Any:
    """The counting functions that lived here (``memekit.space.cost.count_flops``, ...), from
    :mod:`memekit.space.counting`, imported (with torch) when first asked for."""
    if name in _COUNTING:
        from . import counting

        return getattr(counting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ExpertCost:
    """Cost of one expert: its interval, parameters, MACs per forward and steps it serves."""

    interval: tuple[int, int]
    params: int
    macs: int
    steps: int


@dataclass(frozen=True)
class SpecCost:
    """Cost of a whole MemeSpec over an S-step DDIM trajectory (batch 1)."""

    experts: tuple[ExpertCost, ...]
    sampling_steps: int

    @property
    def params(self) -> int:
        return sum(e.params for e in self.experts)

    @property
    def trajectory_macs(self) -> int:
        return sum(e.macs * e.steps for e in self.experts)

    @property
    def mean_macs_per_step(self) -> float:
        return self.trajectory_macs / self.sampling_steps


def spec_cost(spec: MemeSpec, sampling_steps: int = 50, device: str = "cpu") -> SpecCost:
    """Parameters and MACs of every expert, and the MACs of an S-step sampling trajectory; the
    experts are built on ``device`` (``"meta"``: shapes only, no memory, see :func:`check_spec`)."""
    from .counting import count_expert

    return _spec_cost(spec, sampling_steps, lambda expert: count_expert(expert, device))


def _spec_cost(spec: MemeSpec, sampling_steps: int, count: Any) -> SpecCost:
    """:class:`SpecCost` with ``count(expert) -> (params, macs)`` called once per distinct expert."""
    steps = trajectory_steps(spec, sampling_steps)
    cache: dict[ExpertSpec, tuple[int, int]] = {}
    experts = []
    for n, expert in enumerate(spec.experts):
        if expert not in cache:
            cache[expert] = count(expert)
        params, macs = cache[expert]
        experts.append(ExpertCost(spec.intervals[n], params, macs, steps[n]))
    return SpecCost(tuple(experts), sampling_steps)


# (parameters, MACs per forward) of each expert of every preset, counted on the meta device
# (check_spec); tests/space/test_space_check.py recounts them, so a change to the network fails there
PRESET_EXPERT_COSTS: dict[tuple[str, int], tuple[tuple[int, int], ...]] = {
    ("single-large", 32): ((7898579, 1289062656),),
    ("single-large", 64): ((7898579, 4847598336),),
    ("single-small", 32): ((2592323, 442226688),),
    ("single-small", 64): ((2592323, 1628688384),),
    ("multi-same", 32): ((2592323, 442226688),) * 4,
    ("multi-same", 64): ((2592323, 1628688384),) * 4,
    ("meme-paper", 32): ((2499971, 418720000), (2514083, 418971520), (2537203, 432727680), (2554003, 433022208)),
    ("meme-paper", 64): ((2499971, 1585681408), (2514083, 1586982400), (2537203, 1604160000),
                         (2554003, 1605633024)),
}


@functools.cache
def preset_expert_costs() -> dict[ExpertSpec, tuple[int, int]]:
    """:data:`PRESET_EXPERT_COSTS` by expert spec."""
    from .presets import PRESETS

    return {expert: cost for (name, resolution), costs in PRESET_EXPERT_COSTS.items()
            for expert, cost in zip(PRESETS[name][resolution].experts, costs, strict=True)}


# beyond this no machine could build the network: 40 GB of fp32 weights, 4x that with gradients,
# Adam's moments and the EMA copy, more than any accelerator's memory
MAX_PARAMS = 10**10


def check_spec(spec: MemeSpec, sampling_steps: int = 50) -> SpecCost:
    """:func:`spec_cost` counted on PyTorch's meta device (shapes only: no memory, any size; a
    preset's experts are looked up in :data:`PRESET_EXPERT_COSTS` instead), or a one-line
    :class:`SpecError` when the spec has more than :data:`MAX_PARAMS` parameters."""
    known = preset_expert_costs()

    def count(expert: ExpertSpec) -> tuple[int, int]:
        if expert in known:
            return known[expert]
        from .counting import count_expert

        return count_expert(expert, "meta")

    cost = _spec_cost(spec, sampling_steps, count)
    if cost.params > MAX_PARAMS:
        raise SpecError(f"{cost.params:,} parameters ({cost.params / 1e9:,.0f} billion) exceed 10^10: no machine "
                        "could build this network; lower base_width, channel_mult or blocks_per_stage")
    return cost


def _fmt_share(shares: tuple[float, ...]) -> str:
    return "/".join(f"{s:.2f}" for s in shares)


def cost_table(spec: MemeSpec, steps: int, baseline: MemeSpec | None = None) -> str:
    """Per-expert params, MACs per forward and trajectory MACs as text (:func:`check_spec`), against
    ``baseline`` (the single model of the same resolution that the ratio compares with, e.g.
    ``single-large``)."""
    cost = check_spec(spec, steps)
    lines = [f"{'expert':>6} {'interval':>12} {'p':>5} {'attention share (built)':>25} "
             f"{'params':>10} {'MMACs/fwd':>10} {'steps':>5} {'GMACs/traj':>10}"]
    for n, (e, c) in enumerate(zip(spec.experts, cost.experts, strict=True)):
        lo, hi = c.interval
        lines.append(f"{n:>6} {f'[{lo}, {hi})':>12} {spec.soft_assignment[n]:>5.2f} "
                     f"{_fmt_share(e.effective_attention_share()):>25} {c.params:>10,} "
                     f"{c.macs / 1e6:>10.1f} {c.steps:>5} {c.macs * c.steps / 1e9:>10.2f}")
    lines.append(f"total params {cost.params:,}; trajectory ({steps} DDIM steps) "
                 f"{cost.trajectory_macs / 1e9:.2f} GMACs, {cost.mean_macs_per_step / 1e6:.1f} MMACs/step")
    if baseline is not None:
        large = spec_cost(baseline, steps)
        lines.append(f"{baseline.name} at {spec.experts[0].resolution} px: {large.trajectory_macs / 1e9:.2f} GMACs "
                     f"-> trajectory MACs ratio {baseline.name} / this = "
                     f"{large.trajectory_macs / cost.trajectory_macs:.2f}x")
    lines.append(f"counter: {COUNTER_NAME}, batch 1")
    return "\n".join(lines)
