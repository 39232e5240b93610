"""Statistics of claims about training runs: estimates with their standard error, and verdicts.

One quantity per function, plain arrays in, small frozen records out (house style 6 and 18). The
conventions every report of memekit uses:

- A metric's **SE** is ``s / sqrt(n)`` with the sample SD ``s`` (ddof 1).
- **Welch** (unequal variances): ``d = mean(a) - mean(b)``, ``SE = sqrt(s_a^2/n_a + s_b^2/n_b)``,
  Welch-Satterthwaite degrees of freedom (``scipy.stats.ttest_ind(equal_var=False)``).
- **Paired**: the differences ``a_i - b_i`` of runs that share seeds, ``SE = s_d / sqrt(n)``,
  ``n - 1`` dof (``scipy.stats.ttest_rel``).
- A **pooled SD** over groups: ``s^2 = sum (n_g - 1) s_g^2 / sum (n_g - 1)``, with that many dof and
  a chi-square interval ``s sqrt(dof / chi2_{1-a/2, dof}) .. s sqrt(dof / chi2_{a/2, dof})``.
- **Rows x training seeds** (:func:`fit_rows`): every run's score ``y_{r,s}`` of row r and training
  seed s in one least-squares fit, ``y = mu_r + e`` (unblocked: the SD pooled within rows) or
  ``y = mu_r + beta_s + e`` (blocked by seed: runs of one seed share data order and noise draws,
  so their common part cancels in a contrast between rows). A contrast ``sum_r w_r mu_r``
  (``sum w = 0``) has ``SE^2 = w' Cov w`` from the fit and the residual dof. With two rows and
  complete seeds the blocked fit is the paired t-test and the unblocked fit Student's pooled t-test.
- **Verdicts** on ``d`` with ``SE`` and dof (lower is better, as for KID and FID):
  superiority two-sided (``p = 2 T(-|d| / SE)``); non-inferiority against a margin ``m > 0``
  declared before the runs (H0: ``d >= m``, ``p = T((d - m) / SE)``, met when the one-sided upper
  bound ``d + t_{1-a} SE < m``); equivalence by two one-sided tests (TOST, H0: ``|d| >= m``,
  ``p = max(T((d - m) / SE), 1 - T((d + m) / SE))``).
- **Holm-Bonferroni** over a family of m tests: sort the p-values, ``p_adj(i) = max_{j <= i}
  min(1, (m - j + 1) p_(j))``; a test is rejected at level a when ``p_adj < a``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05


def _st():  # scipy.stats
    """``scipy.stats``, imported at the first distribution needed, so that the modules built on this
    one (compare, ablate) give the command line their choices without importing scipy."""
    from scipy import stats

    return stats


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error over ``n`` values (NaN SE for one value)."""

    mean: float
    se: float
    n: int

    @property
    def dof(self) -> int:
        return self.n - 1


@dataclass(frozen=True)
class Difference:
    """``a - b`` (or any contrast) with its SE and the degrees of freedom behind the SE."""

    diff: float
    se: float
    dof: float
    basis: str = ""

    @property
    def t(self) -> float:
        return self.diff / self.se if self.se > 0 else math.nan

    @property
    def p(self) -> float:
        """Two-sided p-value of ``diff = 0``."""
        return two_sided_p(self.diff, self.se, self.dof)

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The two-sided ``level`` confidence interval ``d +- t_{(1+level)/2, dof} SE``."""
        half = t_cutoff(self.dof, level) * self.se
        return self.diff - half, self.diff + half


@dataclass(frozen=True)
class PooledSD:
    """A standard deviation pooled over groups, its dof and its ``level`` chi-square interval."""

    sd: float
    dof: int
    low: float
    high: float
    level: float = 0.95


# ---- one sample -------------------------------------------------------------------------------------
def sample_sd(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); NaN for fewer than two values."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1)) if v.size > 1 else math.nan


def mean_se(values: Sequence[float]) -> Estimate:
    """Mean and SE ``s / sqrt(n)``; NaN SE for one value; a ValueError for none."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_se of no values")
    return Estimate(float(v.mean()), sample_sd(v) / math.sqrt(v.size), int(v.size))


def t_cutoff(dof: float, level: float = 0.95, sided: int = 2) -> float:
    """Student-t quantile: ``t_{(1+level)/2, dof}`` (two-sided) or ``t_{level, dof}`` (one-sided);
    NaN for dof < 1 or NaN."""
    if not dof >= 1:
        return math.nan
    q = (1 + level) / 2 if sided == 2 else level
    return float(_st().t.ppf(q, dof))


def two_sided_p(diff: float, se: float, dof: float) -> float:
    """``2 T_dof(-|diff| / se)``; NaN when the SE or dof is unknown."""
    if not (se > 0 and dof >= 1):
        return math.nan
    return float(2 * _st().t.sf(abs(diff) / se, dof))


# ---- two samples ------------------------------------------------------------------------------------
def welch(a: Sequence[float], b: Sequence[float]) -> Difference:
    """``mean(a) - mean(b)`` with the Welch SE and Welch-Satterthwaite dof (module docstring)."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.size < 2 or b_.size < 2:
        return Difference(float(a_.mean() - b_.mean()), math.nan, math.nan, "Welch: needs two values per side")
    va, vb = a_.var(ddof=1) / a_.size, b_.var(ddof=1) / b_.size
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (a_.size - 1) + vb**2 / (b_.size - 1)) if va + vb > 0 else math.nan
    return Difference(float(a_.mean() - b_.mean()), se, float(dof), f"Welch, {a_.size} and {b_.size} values")


def paired(a: Sequence[float], b: Sequence[float]) -> Difference:
    """The mean of ``a_i - b_i`` with SE ``s_d / sqrt(n)`` and ``n - 1`` dof (module docstring)."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape:
        raise ValueError(f"paired values need one b per a, got {a_.size} and {b_.size}")
    e = mean_se(a_ - b_)
    return Difference(e.mean, e.se, float(e.dof) if e.n > 1 else math.nan, f"paired, {e.n} pairs")


def pooled_sd(groups: Sequence[Sequence[float]], level: float = 0.95) -> PooledSD:
    """The SD pooled over ``groups`` (each of >= 2 values; smaller ones add nothing) with its dof and
    chi-square ``level`` interval; NaN when no group has two values."""
    ss, dof = 0.0, 0
    for g in groups:
        v = np.asarray(g, dtype=np.float64)
        if v.size > 1:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += v.size - 1
    if dof == 0:
        return PooledSD(math.nan, 0, math.nan, math.nan, level)
    return _pooled(ss, dof, level)


def _pooled(ss: float, dof: int, level: float) -> PooledSD:
    sd = math.sqrt(ss / dof)
    lo, hi = _st().chi2.ppf((1 - level) / 2, dof), _st().chi2.ppf((1 + level) / 2, dof)
    return PooledSD(sd, dof, sd * math.sqrt(dof / hi), sd * math.sqrt(dof / lo), level)


# ---- rows x training seeds ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RowFit:
    """A least-squares fit of every run's score on its row (and, blocked, its training seed)."""

    rows: tuple[str, ...]
    coef: np.ndarray  # (R,) row coefficients (blocked: at the first seed's level)
    cov: np.ndarray  # (R, R) their covariance
    residual: PooledSD
    blocked: bool
    runs: int

    def contrast(self, weights: Mapping[str, float], basis: str = "") -> Difference:
        """``sum_r w_r mu_r`` with its SE and the fit's residual dof; the weights must sum to 0 for a
        blocked fit (only contrasts are estimable there)."""
        w = np.array([float(weights.get(r, 0.0)) for r in self.rows])
        unknown = set(weights) - set(self.rows)
        if unknown:
            raise ValueError(f"rows {sorted(unknown)} are not in the fit")
        if self.blocked and abs(w.sum()) > 1e-12:
            raise ValueError("a blocked fit estimates contrasts only: the weights must sum to 0")
        var = float(w @ self.cov @ w)
        return Difference(float(w @ self.coef), math.sqrt(var) if var >= 0 else math.nan, float(self.residual.dof),
                          basis or self.label)

    @property
    def label(self) -> str:
        how = "blocked by training seed" if self.blocked else "unblocked"
        return (f"{self.runs} runs of {len(self.rows)} rows, {how}, "
                f"residual SD {self.residual.sd:.4g} ({self.residual.dof} dof)")


def fit_rows(values: Mapping[str, Mapping[str, float]], blocked: bool, level: float = 0.95) -> RowFit:
    """Fit ``y_{r,s} = mu_r (+ beta_s) + e`` to ``values[row][seed]`` by least squares (module
    docstring). Rows with one run add no dof but are estimated; the residual SD is pooled over all
    rows (one noise level assumed for every row)."""
    rows = tuple(values)
    seeds = tuple(sorted({s for r in rows for s in values[r]}, key=str))
    cells = [(i, seeds.index(s), float(y)) for i, r in enumerate(rows) for s, y in values[r].items()]
    n, k_rows = len(cells), len(rows)
    extra = seeds[1:] if blocked else ()
    x = np.zeros((n, k_rows + len(extra)))
    y = np.array([c[2] for c in cells])
    for j, (i, s, _) in enumerate(cells):
        x[j, i] = 1.0
        if blocked and s > 0:
            x[j, k_rows + s - 1] = 1.0
    xtx_inv = np.linalg.pinv(x.T @ x)
    beta = xtx_inv @ x.T @ y
    rank = int(np.linalg.matrix_rank(x))
    dof = n - rank
    rss = float(((y - x @ beta) ** 2).sum())
    residual = _pooled(rss, dof, level) if dof > 0 else PooledSD(math.nan, 0, math.nan, math.nan, level)
    sigma2 = residual.sd**2 if dof > 0 else math.nan
    return RowFit(rows, beta[:k_rows], sigma2 * xtx_inv[:k_rows, :k_rows], residual, blocked, n)


# ---- verdicts -----------------------------------------------------------------------------------------
def noninferiority_p(d: Difference, margin: float) -> float:
    """p of H0 ``diff >= margin`` against ``diff < margin`` (lower is better; ``margin > 0``)."""
    if not margin > 0:
        raise ValueError(f"a non-inferiority margin must be > 0, got {margin}")
    if not (d.se > 0 and d.dof >= 1):
        return math.nan
    return float(_st().t.cdf((d.diff - margin) / d.se, d.dof))


def equivalence_p(d: Difference, margin: float) -> float:
    """TOST p of H0 ``|diff| >= margin``: the larger of the two one-sided p-values."""
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    if not (d.se > 0 and d.dof >= 1):
        return math.nan
    upper = _st().t.cdf((d.diff - margin) / d.se, d.dof)
    lower = _st().t.sf((d.diff + margin) / d.se, d.dof)
    return float(max(upper, lower))


def upper_bound(d: Difference, alpha: float = ALPHA) -> float:
    """The one-sided ``1 - alpha`` upper confidence bound ``d + t_{1-alpha, dof} SE``."""
    return d.diff + t_cutoff(d.dof, 1 - alpha, sided=1) * d.se


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (module docstring); NaN stays NaN and
    does not count towards m."""
    p = np.asarray(pvalues, dtype=np.float64)
    known = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, np.nan)
    m = known.size
    order = known[np.argsort(p[known], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]
