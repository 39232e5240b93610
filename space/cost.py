"""Cost model: parameters, MACs per forward, MACs of a sampling trajectory, latency.

The counter is ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, linear layers,
matrix products and attention; elementwise ops, norms and pooling are not counted), extended
with a formula for the CPU flash-attention kernel that PyTorch leaves at 0:
``FLOPs = 2 B H S_q S_k d_qk + 2 B H S_q S_k d_v`` (QK^T and AV). memekit reports
**MACs = FLOPs / 2** for one sample (batch 1) unless stated otherwise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import SpecError
from .expert import build_expert
from .spec import ExpertSpec, MemeSpec
from .trajectory import trajectory_steps as trajectory_steps  # re-exported (moved to trajectory.py)

COUNTER_NAME = "torch FlopCounterMode + SDPA formula (MACs = FLOPs/2)"


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(QK^T)V for shapes (B, H, S_q, d_qk), (B, H, S_k, d_qk), (B, H, S_k, d_v)."""
    b, h, s_q, d_qk = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d_qk + 2 * b * h * s_q * s_k * d_v


SDPA_FLOP_MAPPING = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running ``fn()`` once (forward only, no autograd)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=SDPA_FLOP_MAPPING) as counter:
        fn()
    return int(counter.get_total_flops())


def expert_macs(spec: ExpertSpec, model: nn.Module | None = None) -> int:
    """MACs of one expert forward for a single image (batch 1) at ``spec.resolution``."""
    model = build_expert(spec) if model is None else model
    device = next(model.parameters()).device
    x = torch.zeros(1, spec.image_channels, spec.resolution, spec.resolution, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        return count_flops(lambda: model(x, t)) // 2
    finally:
        model.train(was_training)


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
    steps = trajectory_steps(spec, sampling_steps)
    cache: dict[ExpertSpec, tuple[int, int]] = {}
    experts = []
    for n, expert in enumerate(spec.experts):
        if expert not in cache:
            with torch.device(device):
                model = build_expert(expert)
            cache[expert] = (count_params(model), expert_macs(expert, model))
        params, macs = cache[expert]
        experts.append(ExpertCost(spec.intervals[n], params, macs, steps[n]))
    return SpecCost(tuple(experts), sampling_steps)


# beyond this no machine could build the network: 40 GB of fp32 weights, 4x that with gradients,
# Adam's moments and the EMA copy, more than any accelerator's memory
MAX_PARAMS = 10**10


def check_spec(spec: MemeSpec, sampling_steps: int = 50) -> SpecCost:
    """:func:`spec_cost` counted on PyTorch's meta device (shapes only: no memory, any size), or a
    one-line :class:`SpecError` when the spec has more than :data:`MAX_PARAMS` parameters."""
    cost = spec_cost(spec, sampling_steps, device="meta")
    if cost.params > MAX_PARAMS:
        raise SpecError(f"{cost.params:,} parameters ({cost.params / 1e9:,.0f} billion) exceed 10^10: no machine "
                        "could build this network; lower base_width, channel_mult or blocks_per_stage")
    return cost


def measure_latency(fn: Callable[[], object], warmup: int = 3, repeats: int = 10,
                    device: torch.device | str | None = None) -> float:
    """Median wall time of ``fn()`` in seconds after ``warmup`` calls; CUDA-synchronised."""
    cuda = device is not None and torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
