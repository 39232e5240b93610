"""memekit.analysis.stats against scipy and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from memekit.analysis.stats import (
    Difference,
    equivalence_p,
    fit_rows,
    holm,
    mean_se,
    noninferiority_p,
    paired,
    pooled_sd,
    t_cutoff,
    upper_bound,
    welch,
)

RNG = np.random.default_rng(7)
A = RNG.normal(0.05, 0.002, 5)
B = RNG.normal(0.06, 0.004, 4)


def test_mean_se_closed_form():
    e = mean_se([1.0, 2.0, 3.0, 6.0])
    assert e.mean == 3.0
    assert e.se == pytest.approx(math.sqrt(((4 + 1 + 0 + 9) / 3) / 4))
    assert math.isnan(mean_se([2.0]).se)


def test_welch_matches_scipy():
    d = welch(A, B)
    ref = stats.ttest_ind(A, B, equal_var=False)
    assert d.t == pytest.approx(ref.statistic)
    assert d.p == pytest.approx(ref.pvalue)
    assert d.dof == pytest.approx(ref.df)


def test_paired_matches_scipy():
    b = A + RNG.normal(0.001, 0.0005, A.size)
    d = paired(A, b)
    ref = stats.ttest_rel(A, b)
    assert d.t == pytest.approx(ref.statistic)
    assert d.p == pytest.approx(ref.pvalue)
    assert d.dof == A.size - 1


def test_t_cutoff_and_interval():
    assert t_cutoff(4) == pytest.approx(2.7764451)  # tables: t_{0.975, 4}
    assert t_cutoff(10, 0.95, sided=1) == pytest.approx(1.8124611)  # t_{0.95, 10}
    lo, hi = Difference(1.0, 0.5, 4).interval()
    assert (hi - lo) / 2 == pytest.approx(2.7764451 * 0.5)


def test_pooled_sd_closed_form_and_interval():
    g1, g2 = [1.0, 3.0], [2.0, 4.0, 9.0]
    p = pooled_sd([g1, g2, [5.0]])  # the one-value group adds nothing
    ss = (1 - 2) ** 2 + (3 - 2) ** 2 + (2 - 5) ** 2 + (4 - 5) ** 2 + (9 - 5) ** 2  # means 2 and 5
    assert p.dof == 3
    assert p.sd == pytest.approx(math.sqrt(ss / 3))
    # the interval covers the true SD in about 95 % of normal samples
    cover = 0
    for _ in range(2000):
        groups = [RNG.normal(0, 2.0, 3) for _ in range(4)]
        q = pooled_sd(groups)
        cover += q.low <= 2.0 <= q.high
    assert 0.93 < cover / 2000 < 0.97


def test_fit_rows_two_rows_is_paired_and_student():
    b = A + RNG.normal(0.001, 0.0005, A.size)
    values = {"a": dict(enumerate(A)), "b": dict(enumerate(b))}
    blocked = fit_rows(values, blocked=True).contrast({"a": 1, "b": -1})
    ref = stats.ttest_rel(A, b)
    assert blocked.t == pytest.approx(ref.statistic)
    assert blocked.dof == A.size - 1
    unblocked = fit_rows(values, blocked=False).contrast({"a": 1, "b": -1})
    ref = stats.ttest_ind(A, b, equal_var=True)
    assert unblocked.t == pytest.approx(ref.statistic)
    assert unblocked.dof == 2 * A.size - 2


def test_fit_rows_unblocked_sd_is_pooled_sd_and_singletons_are_estimated():
    values = {"a": {0: 1.0, 1: 3.0}, "b": {0: 2.0, 1: 4.0, 2: 9.0}, "c": {0: 7.0}}
    fit = fit_rows(values, blocked=False)
    assert fit.residual.sd == pytest.approx(pooled_sd([[1, 3], [2, 4, 9]]).sd)
    d = fit.contrast({"c": 1, "a": -1})
    assert d.diff == pytest.approx(7.0 - 2.0)
    assert d.se == pytest.approx(fit.residual.sd * math.sqrt(1 + 1 / 2))


def test_fit_rows_blocked_removes_a_shared_seed_effect():
    # rows differ by exactly 1 and 3; every seed adds its own offset: a blocked fit sees no noise
    seed_effect = {0: 0.0, 1: 5.0, 2: -2.0}
    values = {r: {s: base + e for s, e in seed_effect.items()} for r, base in (("a", 0.0), ("b", 1.0), ("c", 3.0))}
    values["a"][1] += 0.1  # a little noise so the residual is finite
    fit = fit_rows(values, blocked=True)
    d = fit.contrast({"c": 1, "a": -1})
    assert abs(d.diff - 3.0) < 0.1
    assert fit.residual.sd < 0.1 < fit_rows(values, blocked=False).residual.sd
    with pytest.raises(ValueError, match="sum to 0"):
        fit.contrast({"a": 1})


def test_noninferiority_equals_one_sided_scipy_test():
    margin = 0.004
    a, b = A, B - 0.012  # b better than a by a little
    d = Difference(*_student(a, b))
    ref = stats.ttest_ind(a - margin, b, equal_var=True, alternative="less")
    assert noninferiority_p(d, margin) == pytest.approx(ref.pvalue)
    # the bound rule and the p rule agree
    assert (upper_bound(d) < margin) == (noninferiority_p(d, margin) < 0.05)


def test_equivalence_is_the_larger_one_sided_p():
    margin = 0.02
    d = Difference(*_student(A, B))
    upper = stats.ttest_ind(A - margin, B, equal_var=True, alternative="less").pvalue
    lower = stats.ttest_ind(A + margin, B, equal_var=True, alternative="greater").pvalue
    assert equivalence_p(d, margin) == pytest.approx(max(upper, lower))
    with pytest.raises(ValueError):
        equivalence_p(d, 0.0)


def test_holm_closed_form():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.2 -> 0.04, max(0.04, 0.06), max(0.06, 0.06), max(0.06, 0.2)
    assert holm([0.03, 0.2, 0.01, 0.02]) == pytest.approx([0.06, 0.2, 0.04, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, math.nan])
    assert out[0] == pytest.approx(0.01) and math.isnan(out[1])


def _student(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    n, m = a.size, b.size
    sp = math.sqrt(((n - 1) * a.var(ddof=1) + (m - 1) * b.var(ddof=1)) / (n + m - 2))
    return float(a.mean() - b.mean()), sp * math.sqrt(1 / n + 1 / m), n + m - 2
