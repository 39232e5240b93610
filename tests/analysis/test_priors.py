"""Interval segmentation and attention-share priors against closed forms and brute force."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from memekit.analysis.data import dead_leaves
from memekit.analysis.priors import (
    PRIOR_NAME,
    PriorError,
    attention_share_proposal,
    buried_fraction,
    interval_costs,
    interval_low_pass_level,
    low_pass_level,
    prior_spec,
    propose_intervals,
    segment_profile,
    soft_assignment_prior,
    spectral_report,
    wiener_gain,
)
from memekit.analysis.spectra import snr, spectral_profile
from memekit.space import (
    Diffusion,
    ExpertSpec,
    MemeSpec,
    get_preset,
    load_spec,
    save_spec,
    uniform_intervals,
)


def piecewise_constant(boundaries: tuple[int, ...], k: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [np.tile(rng.uniform(0, 1, k), (hi - lo, 1)) for lo, hi in zip(boundaries[:-1], boundaries[1:], strict=True)]
    return np.concatenate(rows)


@pytest.fixture(scope="module")
def profile():
    return spectral_profile(dead_leaves(24, 32, seed=3), Diffusion(get_preset("meme-paper").diffusion).alpha_bar)


# ---- DP segmentation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("boundaries", [(0, 37, 90, 151, 200), (0, 1, 2, 200), (0, 120, 121, 300)])
def test_dp_recovers_exact_boundaries_of_piecewise_constant_profile(boundaries):
    profile = piecewise_constant(boundaries)
    assert segment_profile(profile, len(boundaries) - 1) == boundaries


def test_dp_recovers_boundaries_under_small_noise():
    boundaries = (0, 250, 400, 700, 1000)
    profile = piecewise_constant(boundaries, seed=1)
    profile += np.random.default_rng(2).normal(0, 1e-3, profile.shape)
    assert segment_profile(profile, 4) == boundaries


def test_interval_cost_is_the_within_interval_sum_of_squared_deviations():
    v = np.random.default_rng(3).normal(size=(9, 4))
    cost = interval_costs(v)
    for lo, hi in itertools.combinations(range(10), 2):
        direct = ((v[lo:hi] - v[lo:hi].mean(axis=0)) ** 2).sum()
        assert cost[lo, hi] == pytest.approx(direct, abs=1e-10)
    assert np.isinf(cost[4, 4]) and np.isinf(cost[5, 3])
    assert np.isinf(interval_costs(v, min_length=3)[2, 4]) and np.isfinite(interval_costs(v, min_length=3)[2, 5])


@pytest.mark.parametrize("min_length", [1, 3])
def test_dp_is_optimal_against_brute_force(min_length):
    T, n = 13, 3
    v = np.random.default_rng(4).normal(size=(T, 3))

    def total(cuts):
        b = (0, *cuts, T)
        return sum(((v[lo:hi] - v[lo:hi].mean(axis=0)) ** 2).sum() for lo, hi in zip(b[:-1], b[1:], strict=True))

    feasible = [c for c in itertools.combinations(range(1, T), n - 1)
                if all(hi - lo >= min_length for lo, hi in zip((0, *c), (*c, T), strict=True))]
    best = min(feasible, key=total)
    found = segment_profile(v, n, min_length)
    assert total(found[1:-1]) == pytest.approx(total(best), abs=1e-10)


def test_minimum_length_is_respected_and_infeasible_requests_fail():
    profile = piecewise_constant((0, 2, 50, 100))
    cuts = segment_profile(profile, 3, min_length=10)
    assert min(np.diff(cuts)) >= 10
    with pytest.raises(PriorError, match="do not fit"):
        segment_profile(profile, 3, min_length=40)


@pytest.mark.parametrize("T,n", [(1000, 4), (1000, 8), (12, 3), (1000, 1)])
def test_uniform_boundaries_are_the_papers(T, n):
    # the paper's 1-indexed (n-1)T/N < t <= nT/N is 0-indexed [(n-1)T/N, nT/N)
    assert uniform_intervals(T, n) == tuple(((k - 1) * T // n, k * T // n) for k in range(1, n + 1))
    if (T, n) == (1000, 4):
        assert uniform_intervals(T, n) == ((0, 250), (250, 500), (500, 750), (750, 1000))


def test_proposed_intervals_cover_all_steps(profile):
    intervals = propose_intervals(profile, 4)
    assert intervals[0][0] == 0 and intervals[-1][1] == profile.timesteps
    assert all(a[1] == b[0] for a, b in zip(intervals[:-1], intervals[1:], strict=True))
    assert min(hi - lo for lo, hi in intervals) >= profile.timesteps // 16


# ---- attention shares -------------------------------------------------------------------------------------
def test_wiener_gain_closed_form():
    np.testing.assert_allclose(wiener_gain(np.array([0.0, 1.0, 3.0, np.inf])), [0.0, 0.5, 0.75, 1.0])


def test_low_pass_level_is_non_decreasing_and_bounded(profile):
    rho = low_pass_level(profile)
    assert np.all(np.diff(rho) >= 0) and rho.min() >= 0 and rho.max() <= 1
    rho_n = interval_low_pass_level(profile, propose_intervals(profile, 4))
    assert np.all(np.diff(rho_n) >= 0)


def test_attention_share_endpoints_closed_form():
    base = get_preset("meme-paper").experts[0]  # widths 32, 64, 64, 64; head_dim 8
    shares = attention_share_proposal(np.array([0.0, 1.0]), base, share_range=(0.25, 1.0), depth_weight=0.5)
    # rho = 0, stage 0: share_min; rho = 1, deepest stage: share_max
    assert shares[0][0] == 0.25 and shares[1][-1] == 1.0
    # rho = 0, stage 1 (depth 1/3): 0.25 + 0.75 * 0.5 / 3 = 0.375 = 3 heads of 8 in 64 channels
    assert shares[0][1] == 0.375


def test_attention_shares_are_monotone_in_noise_and_depth_and_on_the_head_grid():
    base = get_preset("meme-paper").experts[0]
    rho = np.linspace(0.0, 1.0, 11)
    shares = np.array(attention_share_proposal(rho, base))
    assert np.all(np.diff(shares, axis=0) >= 0)  # noisier expert: never less attention
    assert np.all(np.diff(shares, axis=1) >= 0)  # deeper stage: never less attention
    for s in range(base.n_stages):
        heads = shares[:, s] * base.stage_width(s) / base.head_dim
        np.testing.assert_allclose(heads, np.round(heads))


def test_soft_assignment_prior_generalises_the_papers():
    assert soft_assignment_prior(4) == (0.8, 0.4, 0.2, 0.1)
    assert soft_assignment_prior(2) == (0.8, 0.1)
    assert soft_assignment_prior(1) == (1.0,)


class FixedCrossover:
    """A stand-in profile whose crossover frequency f_c(t) we choose."""

    def __init__(self, f_c: list[float], resolution: int = 32) -> None:
        self.f_c, self.resolution = np.array(f_c), resolution

    def crossover(self):
        return self.f_c, np.full(len(self.f_c), "crossed", dtype=object)


def test_buried_fraction_closed_form():
    # 32 px, 3 stages: bands [1/4, 1/2], [1/8, 1/4] and the deepest [1/32, 1/8] (two octaves)
    f_c = [0.5, 0.5 / 2**0.5, 0.25, 0.125 / 2, 1 / 32, 0.0]
    beta = buried_fraction(FixedCrossover(f_c), 3)
    expected = [[0, 0, 0], [0.5, 0, 0], [1, 0, 0], [1, 1, 0.5], [1, 1, 1], [1, 1, 1]]
    np.testing.assert_allclose(beta, expected, atol=1e-12)


def test_four_experts_get_different_shares_on_natural_image_spectra():
    for res in (32, 64):
        spec = prior_spec(dead_leaves(64, res, seed=3), 4, get_preset("meme-paper", res))
        shares = [e.attention_share for e in spec.experts]
        assert len(set(shares)) == 4, shares
        assert np.all(np.diff(np.array(shares), axis=0) >= 0)  # noisier: never less attention


def paper_mass(lo: int, hi: int, T: int = 1000) -> float:
    """Mass of the paper's in-interval density over [lo, hi): p_q per uniform quarter, spread evenly."""
    p = (0.8, 0.4, 0.2, 0.1)
    return sum(p[q] * max(0, min(hi, (q + 1) * T // 4) - max(lo, q * T // 4)) / (T // 4) for q in range(4))


# ---- the prior spec ---------------------------------------------------------------------------------------
def test_prior_spec_is_a_valid_meme_spec_on_the_base_architecture(profile, tmp_path):
    base = get_preset("meme-paper", 32)
    spec = prior_spec(profile, 4, base)
    assert isinstance(spec, MemeSpec) and spec.name == PRIOR_NAME == "spectral-prior"
    assert spec.n_experts == 4 and spec.diffusion == base.diffusion
    # the paper's fraction (0.8, 0.4, 0.2, 0.1 by rank) and its density's mass, both as floors
    assert spec.soft_assignment == pytest.approx([min(1, max(q, paper_mass(lo, hi))) for q, (lo, hi)
                                                  in zip((0.8, 0.4, 0.2, 0.1), spec.intervals, strict=True)])
    assert spec.soft_assignment != base.soft_assignment and spec.out_of_interval == base.out_of_interval
    assert spec.intervals == propose_intervals(profile, 4)
    for expert in spec.experts:
        assert dataclasses.replace(expert, attention_share=base.experts[0].attention_share) == base.experts[0]
        assert expert.effective_attention_share() == expert.attention_share
    assert load_spec(save_spec(spec, tmp_path / "prior.json")) == spec


def test_prior_spec_from_images_and_expert_base():
    base = ExpertSpec(resolution=16, base_width=16, channel_mult=(1, 2), blocks_per_stage=(1, 1),
                      attention_share=(0.0, 0.5), head_dim=8, attention_pool=(1, 1))
    spec = prior_spec(dead_leaves(8, 16), 2, base)
    (lo0, hi0), (lo1, hi1) = spec.intervals
    # N = 2: the paper's (0.8, 0.1) on halves [0, 500) and [500, 1000); on the prior's split each p_n
    # is the larger of the paper's and the mass of its density over the interval
    assert spec.n_experts == 2 and spec.soft_assignment == pytest.approx(
        (max(0.8, 0.8 * hi0 / 500), max(0.1, 0.8 * (500 - lo1) / 500 + 0.1)), rel=1e-5)
    single = prior_spec(dead_leaves(8, 16), 1, base)
    assert single.intervals == ((0, 1000),) and single.out_of_interval == "uniform-all"


def test_prior_spec_rejects_resolution_mismatch(profile):
    with pytest.raises(PriorError, match="32 px"):
        prior_spec(profile, 4, get_preset("meme-paper", 64))


def test_spectral_report_tables(profile):
    report = spectral_report(dead_leaves(24, 32, seed=3), get_preset("meme-paper", 32), 4)
    np.testing.assert_allclose(report.profile.data_power, profile.data_power)
    assert report.uniform_boundaries == (0, 250, 500, 750, 1000)
    assert list(report.priors["start"]) == [iv[0] for iv in report.prior.intervals]
    assert len(report.summary) == 1000 and len(report.spectrum) == 1000 * 16


def test_segmentation_weighs_each_ring_by_its_coefficient_count(profile):
    """The DP minimises sum_t sum_k n_k (g - mean g)^2 over all rings: brute force on a short schedule."""
    import itertools

    short = profile.with_alpha_bar(profile.alpha_bar[::50])  # T = 20
    _, counts, power = short.all_rings
    g = wiener_gain(snr(power, short.alpha_bar))

    def cost(bounds):
        return sum((counts * (g[lo:hi] - g[lo:hi].mean(axis=0)) ** 2).sum()
                   for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))

    best = min(((0, *c, 20) for c in itertools.combinations(range(2, 19), 2)
                if all(b - a >= 2 for a, b in zip((0, *c), (*c, 20), strict=True))), key=cost)
    assert tuple(iv[0] for iv in propose_intervals(short, 3, min_length=2)) + (20,) == best


def test_equal_mass_intervals_split_the_papers_density_evenly(profile):
    # the paper's density: 0.8 / 250 per step in [0, 250), 0.4 / 250 in [250, 500), ...; total 1.5
    intervals = propose_intervals(profile, 4, equal_mass=True)
    cumulative = np.cumsum(np.repeat([0.8, 0.4, 0.2, 0.1], 250) / 250)
    for k, (lo, _) in enumerate(intervals[1:], start=1):  # first step where the mass reaches k * 1.5 / 4
        assert lo == int(np.argmax(cumulative >= k * 1.5 / 4 - 1e-12)) + 1
    assert [iv[0] for iv in intervals] == [0, 118, 235, 454]
