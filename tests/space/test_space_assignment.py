"""Soft assignment from a training density (closed forms), and the realised frequencies of the
soft interval sampler under it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memekit.space import ExpertSpec, MemeSpec, SoftIntervalSampler, SpecError, uniform_intervals
from memekit.space.assignment import (
    in_interval_density,
    paper_density,
    paper_soft_assignment,
    paper_soft_assignment_for,
    soft_assignment_for,
)


@pytest.mark.parametrize("T", [1000, 50])
def test_uniform_intervals_give_back_the_papers_values(T: int) -> None:
    assert soft_assignment_for(uniform_intervals(T, 4), paper_density(T, 4)) == pytest.approx((0.8, 0.4, 0.2, 0.1))
    assert paper_soft_assignment(4) == (0.8, 0.4, 0.2, 0.1)
    assert paper_soft_assignment(2) == (0.8, 0.1) and paper_soft_assignment(1) == (1.0,)
    assert soft_assignment_for(uniform_intervals(T, 2), paper_density(T, 2)) == pytest.approx((0.8, 0.1))
    assert paper_soft_assignment_for(uniform_intervals(T, 4)) == pytest.approx((0.8, 0.4, 0.2, 0.1))
    assert paper_soft_assignment_for(uniform_intervals(T, 2)) == pytest.approx((0.8, 0.1))
    assert paper_soft_assignment_for(((0, T),)) == (1.0,)


def test_other_intervals_keep_the_papers_density() -> None:
    # [0, 60): 60 steps of the first quarter (0.8 / 250 each); [60, 246): 186 of them;
    # [246, 510): 4 of q1, 250 of q2 (0.4 / 250), 10 of q3 (0.2 / 250); [510, 1000): 240 of q3, 250 of q4
    intervals = ((0, 60), (60, 246), (246, 510), (510, 1000))
    p = soft_assignment_for(intervals, paper_density(1000))
    assert p == pytest.approx((60 * 0.8 / 250, 186 * 0.8 / 250, (4 * 0.8 + 100 + 10 * 0.2) / 250, (48 + 25) / 250))
    np.testing.assert_allclose(in_interval_density(intervals, p)[[0, 100, 300, 900]],
                               [0.8 / 250, 0.8 / 250, p[2] / 264, 0.2 / 250 * 240 / 490 + 0.1 / 250 * 250 / 490],
                               rtol=1e-9)


def test_the_papers_fraction_and_density_are_both_floors() -> None:
    # the 32 px prior's intervals: [0, 50) holds 50 steps of q1 (0.8 / 250 each), mass 0.16 < 0.8, so the
    # paper's fraction 0.8 wins; [50, 178): 128 steps of q1, 0.4096 > 0.4; [178, 437): 72 of q1 and 187 of
    # q2 (0.4 / 250), 0.5296 > 0.2; [437, 1000): 63 of q2, 250 of q3 (0.2 / 250), 250 of q4 (0.1 / 250)
    intervals = ((0, 50), (50, 178), (178, 437), (437, 1000))
    p = paper_soft_assignment_for(intervals)
    assert p == pytest.approx((0.8, 128 * 0.8 / 250, (72 * 0.8 + 187 * 0.4) / 250, (63 * 0.4 + 50 + 25) / 250))
    density, paper = in_interval_density(intervals, p), paper_density(1000)
    for lo, hi in intervals:  # on average over each interval, no step is sampled less than under meme-paper
        assert density[lo:hi].mean() >= paper[lo:hi].mean() * (1 - 1e-6)
    assert min(a - b for a, b in zip(p, paper_soft_assignment(4), strict=True)) >= 0
    # [0, 700) holds mass 0.8 + 0.4 + 0.2 * 200 / 250 = 1.36, capped at one; the short noisy ones keep the paper's
    assert paper_soft_assignment_for(((0, 700), (700, 800), (800, 900), (900, 1000))) == (1.0, 0.4, 0.2, 0.1)


def test_probabilities_are_capped_at_one_and_need_mass() -> None:
    density = np.full(100, 0.02)  # mass 2 over all steps
    assert soft_assignment_for(((0, 80), (80, 100)), density) == (1.0, 0.4)
    with pytest.raises(SpecError, match="no mass"):
        soft_assignment_for(((0, 50), (50, 100)), np.r_[np.full(50, 0.01), np.zeros(50)])
    with pytest.raises(SpecError, match="one per time-step"):
        soft_assignment_for(((0, 50), (50, 100)), np.full(99, 0.01))


def test_realised_in_interval_frequencies_match_the_rule() -> None:
    """Drawn with the sampler, expert n lands in its own interval a fraction p_n of the time, and
    each of its steps about p_n / L_n of the time (the paper's density)."""
    intervals = ((0, 60), (60, 246), (246, 510), (510, 1000))
    p = soft_assignment_for(intervals, paper_density(1000))
    expert = ExpertSpec(resolution=8, base_width=16, channel_mult=(1, 1), blocks_per_stage=(1, 1),
                        attention_share=(0.5, 1.0), attention_pool=(2, 1))
    spec = MemeSpec(experts=(expert,) * 4, intervals=intervals, soft_assignment=p)
    sampler, n = SoftIntervalSampler(spec), 200_000
    gen = torch.Generator().manual_seed(0)
    for e, (lo, hi) in enumerate(intervals):
        t = sampler.sample(e, n, gen).numpy()
        inside = (t >= lo) & (t < hi)
        assert abs(inside.mean() - p[e]) < 4 * np.sqrt(p[e] * (1 - p[e]) / n)
        per_step = np.bincount(t[inside] - lo, minlength=hi - lo) / n  # draws of each step per image
        assert abs(per_step.std() / per_step.mean()) < 4 / np.sqrt(n * p[e] / (hi - lo))  # flat within noise
