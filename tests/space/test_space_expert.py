"""The expert U-Net: pure-endpoint mixers, shapes, determinism, time conditioning."""

from __future__ import annotations

import pytest
import torch

from memekit.space import ExpertUNet, InceptionMixer, build_expert
from memekit.space.expert import ResBlock

HIGH_FREQUENCY = ("pool_proj", "conv_proj", "conv_dw")


def _mixers(model: torch.nn.Module) -> list[InceptionMixer]:
    return [m for m in model.modules() if isinstance(m, InceptionMixer)]


def _n_mixers(blocks_per_stage: tuple[int, ...]) -> int:
    """b_s down blocks + (b_s + 1) up blocks per stage, plus the middle block."""
    return sum(2 * b + 1 for b in blocks_per_stage) + 1


def _dead_parameters(model: torch.nn.Module, rel: float = 1e-4) -> list[str]:
    """Names of parameters whose gradient is None or negligible next to the largest one
    (float32 round-off leaves ~1e-7 on a parameter whose effect is cancelled exactly)."""
    grads = {n: (p.grad.abs().max().item() if p.grad is not None else None)
             for n, p in model.named_parameters()}
    largest = max(g for g in grads.values() if g is not None)
    return [n for n, g in grads.items() if g is None or g <= rel * largest]


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_endpoint_mixers_build_only_their_branches(make_expert, share):
    spec = make_expert(share=share)
    model = build_expert(spec)
    mixers = _mixers(model)
    assert len(mixers) == _n_mixers(spec.blocks_per_stage)
    width = spec.base_width  # channel_mult (1, 1): every stage is 16 wide
    for mixer in mixers:
        if share == 0.0:
            assert mixer.attention is None
            assert all(getattr(mixer, name) is not None for name in HIGH_FREQUENCY)
            assert mixer.split == (width // 2, width // 2, 0)
        else:
            assert mixer.attention is not None and mixer.attention.heads == width // spec.head_dim == 2
            assert all(getattr(mixer, name) is None for name in HIGH_FREQUENCY)
            assert mixer.split == (0, 0, width)
    names = [n for n, _ in model.named_parameters()]
    if share == 0.0:
        assert not any(".attention." in n for n in names)
    else:
        assert not any(f".{b}." in n for n in names for b in HIGH_FREQUENCY)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_endpoint_mixers_have_no_unused_parameters(make_expert, share):
    """Loss on each mixer's own output: every mixer parameter gets a real gradient."""
    spec = make_expert(share=share)
    torch.manual_seed(0)
    model = build_expert(spec)
    g = torch.Generator().manual_seed(1)
    for mixer in _mixers(model):
        x = torch.randn(2, sum(mixer.split), 8, 8, generator=g)
        out = mixer(x)
        assert out.shape == x.shape
        (out * torch.randn(out.shape, generator=g)).sum().backward()
        assert _dead_parameters(mixer) == []


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_endpoint_expert_has_no_unused_parameters(make_expert, share):
    """Loss on the network output: every parameter of the whole expert gets a real gradient.

    Width 64 with head_dim 32 (2 heads)."""
    spec = make_expert(share=share, base_width=64, head_dim=32, attention_pool=(1, 1))
    torch.manual_seed(0)
    model = build_expert(spec)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g)
    out = model(x, torch.tensor([3, 40]))
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    assert _dead_parameters(model) == []


def test_expert_shape_and_determinism(make_expert):
    spec = make_expert()
    torch.manual_seed(0)
    a = build_expert(spec).eval()
    torch.manual_seed(0)
    b = build_expert(spec).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 49])
    with torch.no_grad():
        ya, yb = a(x, t), b(x, t)
    assert ya.shape == x.shape and torch.isfinite(ya).all()
    assert torch.equal(ya, yb)
    # per-sample independence: a row alone gives the same answer as inside the batch
    with torch.no_grad():
        torch.testing.assert_close(a(x[1:], t[1:]), ya[1:], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The time embedding must reach the output (regression: GroupNorm with one channel per group
# used to cancel a per-channel embedding added right before it)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "channels",
    [8, 16, 32, 64],
)
def test_resblock_output_depends_on_time_embedding(channels):
    torch.manual_seed(0)
    block = ResBlock(channels, channels, emb_dim=32, dropout=0.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, channels, 8, 8, generator=g)
    emb_a, emb_b = torch.randn(2, 32, generator=g), torch.randn(2, 32, generator=g)
    with torch.no_grad():
        change = (block(x, emb_a) - block(x, emb_b)).abs().max().item()
    assert change > 1e-2


def test_tiny_expert_output_depends_on_t(make_expert):
    torch.manual_seed(0)
    model = build_expert(make_expert()).eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        change = (model(x, torch.tensor([0])) - model(x, torch.tensor([900]))).abs().max().item()
    assert change > 1e-2


def test_expert_runs_in_float64(make_expert):
    torch.manual_seed(0)
    model = ExpertUNet(make_expert()).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    assert model(x, torch.tensor([5])).dtype == torch.float64
