"""The FLOP counter against analytic counts, and the cost model's step bookkeeping.

FlopCounterMode counts 2 x multiply-accumulates of convolutions, matrix products and (through
memekit's formula) CPU attention; biases, norms, activations, pooling and resampling are not
counted. memekit's MACs are FLOPs / 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memekit.space import InceptionMixer, count_flops, expert_macs
from memekit.space.cost import trajectory_steps


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("cin", "cout", "k", "stride", "padding", "size", "groups"),
                         [(3, 5, 3, 1, 1, 8, 1), (3, 5, 3, 2, 1, 9, 1), (4, 6, 1, 1, 0, 7, 1),
                          (8, 8, 3, 1, 1, 8, 8)])
def test_conv_flops_closed_form(cin, cout, k, stride, padding, size, groups, bias):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=bias)
    batch = 2
    x = torch.randn(batch, cin, size, size)
    h_out = (size + 2 * padding - k) // stride + 1
    # 2 * B * (Cin / groups) * Cout * k^2 * Hout * Wout; the bias is not counted
    expected = 2 * batch * (cin // groups) * cout * k * k * h_out * h_out
    assert conv(x).shape[-1] == h_out
    assert count_flops(lambda: conv(x)) == expected


@pytest.mark.parametrize(("batch", "heads", "s_q", "s_k", "d"), [(2, 2, 16, 16, 8), (1, 2, 12, 20, 8),
                                                                 (3, 1, 4, 4, 16)])
def test_sdpa_flops_closed_form_on_cpu(batch, heads, s_q, s_k, d):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, s_q, d, generator=g)
    k = torch.randn(batch, heads, s_k, d, generator=g)
    v = torch.randn(batch, heads, s_k, d, generator=g)
    # QK^T and AV: 2 * 2 * B * heads * S_q * S_k * d  (= 4 B heads S^2 d for self-attention)
    expected = 4 * batch * heads * s_q * s_k * d
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == expected
    # autograd on the inputs does not change the forward count
    q.requires_grad_(True)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == expected


def mixer_macs(channels: int, attention: int, pool: int, size: int) -> int:
    """Independent MAC count of one InceptionMixer on a (1, C, size, size) map."""
    hw = size * size
    tokens = hw // pool**2
    d_pool = (channels - attention) // 2
    d_conv = channels - attention - d_pool
    return (d_pool**2 * hw                     # max-pool branch, 1x1 conv
            + d_conv**2 * hw + 9 * d_conv * hw  # 1x1 conv + depthwise 3x3
            + 3 * attention**2 * tokens         # qkv projection (no bias)
            + 2 * tokens**2 * attention         # QK^T and AV over all heads
            + 9 * channels * hw                 # fuse: depthwise 3x3
            + channels**2 * hw)                 # fuse: 1x1 projection


@pytest.mark.parametrize(("attention", "pool"), [(0, 1), (8, 1), (8, 2), (16, 1), (16, 2)])
def test_inception_mixer_flops_closed_form(attention, pool):
    mixer = InceptionMixer(channels=16, attention_channels=attention, head_dim=8, pool=pool)
    x = torch.randn(1, 16, 8, 8)
    assert count_flops(lambda: mixer(x)) == 2 * mixer_macs(16, attention, pool, 8)


def test_expert_macs_share_one_minus_share_zero_closed_form(make_expert):
    """Only the mixers differ between share 0 and share 1, so the MAC difference is the sum of
    the per-mixer closed forms (b_s down + b_s + 1 up mixers per stage, plus the middle one)."""
    spec0 = make_expert(share=0.0, attention_pool=(1, 1))
    spec1 = make_expert(share=1.0, attention_pool=(1, 1))
    difference = 0
    last = spec0.n_stages - 1
    for s in range(spec0.n_stages):
        count = 2 * spec0.blocks_per_stage[s] + 1 + (s == last)
        width, size = spec0.stage_width(s), spec0.resolution // 2**s
        difference += count * (mixer_macs(width, width, 1, size) - mixer_macs(width, 0, 1, size))
    torch.manual_seed(0)
    assert expert_macs(spec1) - expert_macs(spec0) == difference
    assert difference > 0  # here attention costs more than the conv branches it replaces


def test_trajectory_steps_closed_form(make_spec):
    spec = make_spec((0, 7, 20, 50))
    assert trajectory_steps(spec, 50) == [7, 13, 30]  # all T steps: the interval lengths
    ts = np.round(np.linspace(49, 0, 10)).astype(int)  # 49, 44, 38, 33, 27, 22, 16, 11, 5, 0
    expected = [int(((ts >= lo) & (ts < hi)).sum()) for lo, hi in spec.intervals]
    assert trajectory_steps(spec, 10) == expected == [2, 2, 6]
