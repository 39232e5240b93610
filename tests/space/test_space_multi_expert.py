"""Routing of MultiExpert and the soft interval sampler, against the spec's intervals."""

from __future__ import annotations

import math

import pytest
import torch

from memekit.space import MultiExpert, SoftIntervalSampler

BOUNDARIES = (0, 7, 20, 50)  # three experts over T = 50, uneven on purpose


def owner(t: int, boundaries: tuple[int, ...]) -> int:
    """Independent reference: the k with b_k <= t < b_{k+1}."""
    for k in range(len(boundaries) - 1):
        if boundaries[k] <= t < boundaries[k + 1]:
            return k
    raise AssertionError(f"t={t} outside [0, {boundaries[-1]})")


@pytest.fixture
def routed(make_spec):
    torch.manual_seed(0)
    spec = make_spec(BOUNDARIES)
    return spec, MultiExpert(spec).eval()


def test_boundary_time_steps_belong_to_the_upper_interval(routed):
    spec, model = routed
    assert spec.intervals == ((0, 7), (7, 20), (20, 50))
    for k in range(1, len(BOUNDARIES) - 1):
        b = BOUNDARIES[k]
        t = torch.tensor([b, b - 1])
        assert model.expert_index(t).tolist() == [k, k - 1]
        assert (spec.expert_for(b), spec.expert_for(b - 1)) == (k, k - 1)
    all_t = torch.arange(BOUNDARIES[-1])
    expected = [owner(int(t), BOUNDARIES) for t in all_t]
    assert model.expert_index(all_t).tolist() == expected
    assert [spec.expert_for(int(t)) for t in all_t] == expected


def test_forward_equals_owning_expert_row_by_row(routed):
    spec, model = routed
    g = torch.Generator().manual_seed(1)
    # both sides of every boundary, the ends of [0, T), and a few interior points; shuffled
    t_values = [0, 6, 7, 19, 20, 49, 3, 33, 12, 45]
    t = torch.tensor(t_values)[torch.randperm(len(t_values), generator=g)]
    x = torch.randn(len(t_values), 3, 8, 8, generator=g)
    expected_owner = torch.tensor([owner(int(v), BOUNDARIES) for v in t])
    with torch.no_grad():
        out = model(x, t)
        assert out.shape == x.shape
        for n in range(spec.n_experts):
            rows = (expected_owner == n).nonzero(as_tuple=True)[0]
            assert rows.numel() >= 2
            direct = model.experts[n](x[rows], t[rows])
            assert torch.equal(out[rows], direct)
            # the test has power: any other expert would have given a different answer
            for m in range(spec.n_experts):
                if m != n:
                    assert not torch.allclose(model.experts[m](x[rows], t[rows]), direct)


def test_single_group_batch_goes_to_its_expert(routed):
    _, model = routed
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([7, 13, 19])  # all in interval 1
    with torch.no_grad():
        assert torch.equal(model(x, t), model.experts[1](x, t))


# --------------------------------------------------------------------------------------------
# Soft interval assignment
# --------------------------------------------------------------------------------------------
SOFT_BOUNDARIES = (0, 100, 350, 700, 1000)
SOFT_P = (0.8, 0.4, 0.2, 0.1)
N_DRAWS = 200_000


def _assert_counts_match(counts: torch.Tensor, probs: torch.Tensor, n: int, z: float = 5.5) -> None:
    """Each count within z binomial standard errors of n * prob."""
    expected = n * probs
    se = torch.sqrt(n * probs * (1 - probs))
    worst = ((counts - expected).abs() / se).max().item()
    assert worst < z, f"largest deviation {worst:.2f} standard errors"


@pytest.mark.parametrize("out_of_interval", ["uniform-complement", "uniform-all"])
def test_soft_sampler_own_fraction_and_distribution(make_spec, out_of_interval):
    spec = make_spec(SOFT_BOUNDARIES, soft_assignment=SOFT_P, out_of_interval=out_of_interval)
    sampler = SoftIntervalSampler(spec)
    T = SOFT_BOUNDARIES[-1]
    for n, p in enumerate(SOFT_P):
        lo, hi = SOFT_BOUNDARIES[n], SOFT_BOUNDARIES[n + 1]
        length = hi - lo
        t = sampler.sample(n, N_DRAWS, generator=torch.Generator().manual_seed(100 + n))
        assert t.dtype == torch.int64 and t.shape == (N_DRAWS,)
        assert int(t.min()) >= 0 and int(t.max()) < T
        inside = (t >= lo) & (t < hi)
        # closed form of P(t in own interval)
        q = p if out_of_interval == "uniform-complement" else p + (1 - p) * length / T
        frac = inside.double().mean().item()
        assert abs(frac - q) < 5 * math.sqrt(q * (1 - q) / N_DRAWS), (n, frac, q)
        # the whole law, value by value: P(t = k)
        own = torch.zeros(T, dtype=torch.bool)
        own[lo:hi] = True
        if out_of_interval == "uniform-complement":
            probs = torch.where(own, p / length, (1 - p) / (T - length))
        else:
            probs = torch.where(own, p / length + (1 - p) / T, torch.tensor((1 - p) / T))
        counts = torch.bincount(t, minlength=T).double()
        _assert_counts_match(counts, probs.double(), N_DRAWS)


def test_soft_sampler_complement_draws_never_hit_own_interval(make_spec):
    """With p_n -> 0 every draw is an out-of-interval draw: none may land in the own interval,
    and they are uniform over the complement."""
    tiny_p = (1e-12,) * len(SOFT_P)
    spec = make_spec(SOFT_BOUNDARIES, soft_assignment=tiny_p, out_of_interval="uniform-complement")
    sampler = SoftIntervalSampler(spec)
    T = SOFT_BOUNDARIES[-1]
    for n in range(len(SOFT_P)):
        lo, hi = SOFT_BOUNDARIES[n], SOFT_BOUNDARIES[n + 1]
        t = sampler.sample(n, N_DRAWS, generator=torch.Generator().manual_seed(200 + n))
        assert int(((t >= lo) & (t < hi)).sum()) == 0
        counts = torch.bincount(t, minlength=T).double()
        complement = torch.cat([counts[:lo], counts[hi:]])
        probs = torch.full_like(complement, 1.0 / (T - (hi - lo)))
        _assert_counts_match(complement, probs, N_DRAWS)


def test_soft_sampler_p_one_stays_inside(make_spec):
    spec = make_spec(SOFT_BOUNDARIES, soft_assignment=(1.0,) * 4, out_of_interval="uniform-all")
    sampler = SoftIntervalSampler(spec)
    for n in range(4):
        t = sampler.sample(n, 10_000, generator=torch.Generator().manual_seed(n))
        lo, hi = SOFT_BOUNDARIES[n], SOFT_BOUNDARIES[n + 1]
        assert int(t.min()) == lo and int(t.max()) == hi - 1  # both ends reached, nothing outside


def test_soft_sampler_is_deterministic_under_a_seed(make_spec):
    spec = make_spec(SOFT_BOUNDARIES, soft_assignment=SOFT_P)
    sampler = SoftIntervalSampler(spec)
    a = sampler.sample(2, 1000, generator=torch.Generator().manual_seed(5))
    b = sampler.sample(2, 1000, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
