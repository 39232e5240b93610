"""Counting with torch: parameters and FLOPs of a built network, and wall-clock latency.

The counter is ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, linear layers,
matrix products and attention; elementwise ops, norms and pooling are not counted), extended
with a formula for the CPU flash-attention kernel that PyTorch leaves at 0:
``FLOPs = 2 B H S_q S_k d_qk + 2 B H S_q S_k d_v`` (QK^T and AV). memekit reports
**MACs = FLOPs / 2** for one sample (batch 1) unless stated otherwise. The cost model over whole
specs (:mod:`memekit.space.cost`) is torch-free and counts through this module when it must.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .expert import build_expert
from .spec import ExpertSpec


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


def count_expert(spec: ExpertSpec, device: str = "cpu") -> tuple[int, int]:
    """(parameters, MACs per forward) of the expert built on ``device`` (``"meta"``: shapes only)."""
    with torch.device(device):
        model = build_expert(spec)
    return count_params(model), expert_macs(spec, model)


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
