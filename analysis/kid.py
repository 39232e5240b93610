"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", sec. 3 and app. D).

KID is the squared maximum mean discrepancy between two sets of features under the cubic
polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, estimated without bias,

    MMD^2 = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2,

and averaged over random subsets of m rows of each set. Unlike FID it has no bias in n, so it can
be read at small n; values slightly below 0 are valid. Subsets are drawn with a seeded numpy
Generator (:func:`kid_subsets`), so a result is reproducible, and sums are accumulated in float64.
The features are usually Inception pool3 features (:func:`memekit.analysis.fid.features`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memekit.space.errors import MemekitError

_KERNEL_BLOCK = 1 << 22  # kernel entries computed at once by the Gram method (32 MB of float64)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's cubic kernel ``k(x, y) = (x.y / d + 1)^3`` for every row pair: (n, d), (m, d) -> (n, m),
    float64 (d is the feature dimension)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid_subsets(n_a: int, n_b: int, subsets: int = 100, subset_size: int = 1000,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of KID's subsets: two int64 (subsets, m) arrays, m = min(subset_size, n_a, n_b).

    Subset s draws m rows of A, then m rows of B, each without replacement, from one
    ``np.random.default_rng(seed)``: the same arguments give the same subsets.
    """
    m = min(subset_size, n_a, n_b)
    rng = np.random.default_rng(seed)
    idx_a, idx_b = np.empty((subsets, m), dtype=np.int64), np.empty((subsets, m), dtype=np.int64)
    for s in range(subsets):
        idx_a[s] = rng.choice(n_a, m, replace=False)
        idx_b[s] = rng.choice(n_b, m, replace=False)
    return idx_a, idx_b


def subset_mmd2(features_a: np.ndarray, features_b: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray,
                method: str = "auto") -> np.ndarray:
    """Unbiased MMD^2 (module docstring) of every subset pair X = A[idx_a[s]], Y = B[idx_b[s]]:
    float64 (subsets,).

    ``method="gram"`` builds each kernel matrix once (in blocks of rows) and sums it over every
    subset with 0/1 indicator rows, ``1_S^T K 1_S'``: cost (n_a^2 + n_b^2 + n_a n_b)(d + subsets).
    ``"subsets"`` builds the three m x m kernels of each subset: cost 3 subsets m^2 d (better when
    n is much larger than m). ``"auto"`` takes the cheaper; both give the same numbers.
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    subsets, m = idx_a.shape
    if m < 2 or idx_b.shape != idx_a.shape:
        raise MemekitError(f"KID needs equal subsets of at least 2 rows, got {idx_a.shape} and {idx_b.shape}")
    if method == "auto":
        gram_cost = (len(a) ** 2 + len(b) ** 2 + len(a) * len(b)) * (a.shape[1] + subsets)
        method = "gram" if gram_cost <= 3 * subsets * m * m * a.shape[1] else "subsets"
    if method == "gram":
        pick_a, pick_b = _indicators(idx_a, len(a)), _indicators(idx_b, len(b))
        sum_xx = _kernel_sums(a, a, pick_a, pick_a) - pick_a @ _kernel_diagonal(a)
        sum_yy = _kernel_sums(b, b, pick_b, pick_b) - pick_b @ _kernel_diagonal(b)
        sum_xy = _kernel_sums(a, b, pick_a, pick_b)
    elif method == "subsets":
        sum_xx, sum_yy, sum_xy = np.empty(subsets), np.empty(subsets), np.empty(subsets)
        for s in range(subsets):
            x, y = a[idx_a[s]], b[idx_b[s]]
            k_xx, k_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
            sum_xx[s], sum_yy[s] = k_xx.sum() - np.trace(k_xx), k_yy.sum() - np.trace(k_yy)
            sum_xy[s] = polynomial_kernel(x, y).sum()
    else:
        raise MemekitError(f"unknown MMD method {method!r}: use auto, gram or subsets")
    return (sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * sum_xy / (m * m)


def _indicators(idx: np.ndarray, n: int) -> np.ndarray:
    """(subsets, m) row indices -> (subsets, n) float64 rows of 0 and 1."""
    pick = np.zeros((len(idx), n))
    np.put_along_axis(pick, idx, 1.0, axis=1)
    return pick


def _kernel_diagonal(x: np.ndarray) -> np.ndarray:
    """``k(x_i, x_i) = (|x_i|^2 / d + 1)^3``, (n,)."""
    return (np.einsum("ij,ij->i", x, x) / x.shape[1] + 1.0) ** 3


def _kernel_sums(left: np.ndarray, right: np.ndarray, pick_left: np.ndarray, pick_right: np.ndarray) -> np.ndarray:
    """``1_{S_l}^T K 1_{S_r}`` for every subset, ``K = k(left, right)`` built in blocks of rows."""
    rows = max(1, _KERNEL_BLOCK // len(right))
    acc = np.zeros((len(pick_left), len(right)))  # (subsets, n_right): sum over S_l of K's rows
    for start in range(0, len(left), rows):
        acc += pick_left[:, start:start + rows] @ polynomial_kernel(left[start:start + rows], right)
    return np.einsum("sj,sj->s", acc, pick_right)


def kid(features_a: Any, features_b: Any, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance ``(mean, std)``: :func:`subset_mmd2` over ``subsets`` random
    subsets of ``min(subset_size, n_a, n_b)`` rows (:func:`kid_subsets` with ``seed``).

    ``features_*``: (n, d) arrays or :class:`memekit.analysis.fid.InceptionFeatures`. The std is
    the spread over subsets (ddof = 0, as torch-fidelity and clean-fid report it), not an error
    of the mean.
    """
    a, b = _feature_rows(features_a, "A"), _feature_rows(features_b, "B")
    if a.shape[1] != b.shape[1]:
        raise MemekitError(f"KID: the features differ in dimension, {a.shape[1]} vs {b.shape[1]}")
    if not (isinstance(subsets, int) and subsets >= 1 and isinstance(subset_size, int) and subset_size >= 2):
        raise MemekitError(f"KID needs subsets >= 1 and a subset size >= 2, got {subsets!r} and {subset_size!r}")
    values = subset_mmd2(a, b, *kid_subsets(len(a), len(b), subsets, subset_size, seed))
    return float(values.mean()), float(values.std())


def _feature_rows(x: Any, where: str) -> np.ndarray:
    """The (n, d) rows of an array or a features object; statistics (mu, sigma) cannot give KID."""
    if hasattr(x, "mu") and hasattr(x, "sigma") and not hasattr(x, "features"):
        raise MemekitError(f"KID needs per-image features, but {where} holds statistics (mu, sigma) only: "
                           f"give its images, or a features .npz (memekit fid --save-stats writes one)")
    rows = np.asarray(getattr(x, "features", x))
    if rows.ndim != 2 or len(rows) < 2 or not np.isfinite(rows).all():
        raise MemekitError(f"KID: {where} must be finite features of shape (n >= 2, d), got {rows.shape}")
    return rows
