"""KID: the unbiased MMD^2 against its plain double sums and torch-fidelity, closed forms of a set
against itself, reproducible subsets, and the errors for statistics-only input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fid_helpers import mmd2_direct

from memekit.analysis.fid import InceptionStats, kid_subsets
from memekit.analysis.kid import kid, polynomial_kernel, subset_mmd2
from memekit.space.errors import MemekitError


def _pool3_like(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative, skewed features like post-ReLU pool3 activations, float32 (n, d)."""
    rng = np.random.default_rng(seed)
    return (rng.gamma(1.0, 0.3, (n, d)) + shift).astype(np.float32)


def test_polynomial_kernel_is_the_cubic_of_the_scaled_dot_product() -> None:
    x, y = _pool3_like(3, 5, seed=0), _pool3_like(4, 5, seed=1)
    k = polynomial_kernel(x, y)
    assert k.shape == (3, 4) and k.dtype == np.float64
    assert k[2, 1] == pytest.approx((float(np.dot(x[2].astype(np.float64), y[1])) / 5 + 1) ** 3, rel=1e-12)


def test_kid_with_whole_sets_as_subsets_is_the_double_sum() -> None:
    # subset size >= n: every subset holds all rows, so each equals the plain MMD^2 and std = 0
    a, b = _pool3_like(12, 7, seed=2), _pool3_like(12, 7, seed=3, shift=0.2)
    mean, std = kid(a, b, subsets=4, subset_size=100)
    assert mean == pytest.approx(mmd2_direct(a.astype(np.float64), b.astype(np.float64)), rel=1e-10)
    assert std == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("method", ["gram", "subsets"])
def test_subset_mmd2_equals_the_double_sum_on_every_subset(method: str) -> None:
    a, b = _pool3_like(30, 6, seed=4), _pool3_like(25, 6, seed=5, shift=0.1)
    idx_a, idx_b = kid_subsets(30, 25, subsets=5, subset_size=8, seed=7)
    values = subset_mmd2(a, b, idx_a, idx_b, method=method)
    expected = [mmd2_direct(a[i].astype(np.float64), b[j].astype(np.float64))
                for i, j in zip(idx_a, idx_b, strict=True)]
    np.testing.assert_allclose(values, expected, rtol=1e-10)


def test_kid_subsets_are_seeded_and_without_replacement() -> None:
    idx_a, idx_b = kid_subsets(50, 40, subsets=6, subset_size=100, seed=3)
    assert idx_a.shape == idx_b.shape == (6, 40)  # m = min(subset_size, n_a, n_b)
    assert all(len(set(row)) == 40 for row in (*idx_a, *idx_b))
    again = kid_subsets(50, 40, subsets=6, subset_size=100, seed=3)
    assert np.array_equal(idx_a, again[0]) and np.array_equal(idx_b, again[1])
    assert not np.array_equal(idx_a, kid_subsets(50, 40, subsets=6, subset_size=100, seed=4)[0])
    a, b = _pool3_like(50, 4, seed=8), _pool3_like(40, 4, seed=9)
    assert kid(a, b, 6, 10, seed=3) == kid(a, b, 6, 10, seed=3) != kid(a, b, 6, 10, seed=4)


def test_kid_matches_torch_fidelity_on_the_same_subsets(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-fidelity draws its subsets with np.random.RandomState(seed).choice, A then B per
    subset: a stand-in RandomState hands it memekit's subsets, so both average the same MMD^2s."""
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    a, b = _pool3_like(300, 2048, seed=10), _pool3_like(260, 2048, seed=11, shift=0.02)
    idx_a, idx_b = kid_subsets(300, 260, subsets=10, subset_size=100, seed=5)
    queue = [rows for pair in zip(idx_a, idx_b, strict=True) for rows in pair]

    class SameSubsets:
        def __init__(self, seed: object) -> None:
            pass

        def choice(self, n: int, size: int, replace: bool) -> np.ndarray:
            assert not replace
            return queue.pop(0)

    monkeypatch.setattr(np.random, "RandomState", SameSubsets)
    # float64 tensors: torch-fidelity then computes in float64 too
    theirs = metric_kid.kid_features_to_metric(torch.from_numpy(a.astype(np.float64)),
                                               torch.from_numpy(b.astype(np.float64)), kid_subsets=10,
                                               kid_subset_size=100, verbose=False)
    assert not queue
    mean, std = kid(a, b, subsets=10, subset_size=100, seed=5)
    print(f"memekit {mean!r} +- {std!r}, torch-fidelity {theirs}")
    assert mean == pytest.approx(theirs["kernel_inception_distance_mean"], abs=1e-6, rel=1e-9)
    assert std == pytest.approx(theirs["kernel_inception_distance_std"], abs=1e-6, rel=1e-6)
    # and per subset, against torch-fidelity's kernel_mmd on the same rows
    per_subset = subset_mmd2(a, b, idx_a[:2], idx_b[:2])
    for s in range(2):
        reference = metric_kid.kernel_mmd(a[idx_a[s]].astype(np.float64), b[idx_b[s]].astype(np.float64),
                                          kid_kernel="poly", kid_kernel_poly_degree=3,
                                          kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
        assert per_subset[s] == pytest.approx(reference, rel=1e-9)


def test_kid_of_a_set_against_itself() -> None:
    """Whole-set subsets of one set X: the unbiased estimator's cross term keeps the diagonal, so
    KID(X, X) = -(2 / m) (mean_i k(x_i, x_i) - mean_{i != j} k(x_i, x_j)) exactly: slightly below
    zero, and tiny next to a shifted set; a second sample of the same law gives about 0."""
    x = _pool3_like(400, 64, seed=12)
    k = polynomial_kernel(x, x)
    m = len(x)
    off_diagonal = (k.sum() - np.trace(k)) / (m * (m - 1))
    closed_form = -2 / m * (np.mean(np.diag(k)) - off_diagonal)
    itself, _ = kid(x, x, subsets=2, subset_size=m)
    assert itself == pytest.approx(closed_form, rel=1e-9)
    shifted, _ = kid(x, _pool3_like(400, 64, seed=13, shift=0.1), subsets=20, subset_size=200)
    same_law, _ = kid(x, _pool3_like(400, 64, seed=14), subsets=20, subset_size=200)
    assert shifted > 0 and abs(itself) < 0.05 * shifted and abs(same_law) < 0.05 * shifted


def test_kid_refuses_statistics_and_bad_arguments() -> None:
    stats = InceptionStats(np.zeros(4), np.eye(4), 10, "", 0, "w")
    features = _pool3_like(10, 4, seed=15)
    with pytest.raises(MemekitError, match=r"B holds statistics \(mu, sigma\) only") as err:
        kid(features, stats)
    assert "\n" not in str(err.value)
    with pytest.raises(MemekitError, match="dimension"):
        kid(features, _pool3_like(10, 5, seed=16))
    with pytest.raises(MemekitError, match="subset size >= 2"):
        kid(features, features, subset_size=1)
    with pytest.raises(MemekitError, match="finite"):
        kid(features, np.full((10, 4), np.nan))


def test_kid_of_1000_pool3_rows_over_100_subsets_takes_seconds() -> None:
    """The common setting (n = 1000 vs 1000, 100 subsets of 1000, d = 2048) must not cost 300
    m x m x d products: it runs in about half a second here; 20 s leaves room for a busy machine."""
    import time

    a, b = _pool3_like(1000, 2048, seed=17), _pool3_like(1000, 2048, seed=18, shift=0.05)
    start = time.perf_counter()
    mean, std = kid(a, b, subsets=100, subset_size=1000)
    seconds = time.perf_counter() - start
    print(f"KID of 1000 vs 1000, 100 subsets of 1000: {seconds:.2f} s")
    assert seconds < 20 and mean > 0 and std == pytest.approx(0, abs=1e-12)
