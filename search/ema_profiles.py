"""Power-function EMA profiles by their length: the maths of post-hoc EMA (EDM2 appendix C), numpy
only.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2),
section 3 and appendix C; ported from NVlabs/edm2 ``training/phema.py``. A profile
``p_{t,gamma}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on ``[0, t]`` is named by its length
``sigma_rel`` (its standard deviation relative to ``t``); :mod:`memekit.search.ema` tracks profiles
during training, writes their snapshots and reconstructs any other length from them with
:func:`solve_posthoc_coefficients`.

Split from :mod:`memekit.search.ema` (torch) so that
:class:`~memekit.search.train_config.TrainConfig` and the command line read the default lengths,
their bound and the sweep's scores without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from memekit.space.errors import MemekitError

DEFAULT_SIGMA_RELS = (0.05, 0.10)  # EDM2's two tracked profiles
SIGMA_REL_MAX = 1 / math.sqrt(12)  # gamma -> 0: the uniform average over [0, t]
# how memekit ema scores each reconstructed length (none: no score, no best)
QUALITIES = ("val", "kid", "none")


class PosthocEMAError(MemekitError, ValueError):
    """Post-hoc EMA cannot do what was asked (one line: what is wrong and what to do)."""


def check_sigma_rel(sigma_rel: float) -> float:
    """``sigma_rel`` as a float in (0, 1/sqrt(12)), else a one-line error."""
    if not (isinstance(sigma_rel, int | float) and 0 < sigma_rel < SIGMA_REL_MAX):
        raise PosthocEMAError(f"sigma_rel must lie in (0, {SIGMA_REL_MAX:.4f}) (1/sqrt(12), the "
                              f"uniform average), got {sigma_rel!r}")
    return float(sigma_rel)


def gamma_to_sigma_rel(gamma: float) -> float:
    """The relative standard deviation of ``p_{t,gamma}``: sqrt((g + 1) / ((g + 2)^2 (g + 3)))
    (EDM2 eq. 123)."""
    g = np.float64(gamma)
    return float(np.sqrt((g + 1) / (g + 2) ** 2 / (g + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma > 0 of the profile with relative std ``sigma_rel``: the largest real root
    of g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2) (EDM2 eq. 126, algorithm 2)."""
    t = check_sigma_rel(sigma_rel) ** -2
    return float(np.roots([1, 7, 16 - t, 12 - t]).real.max())


def power_function_beta(gamma: float, t_next: float, t_delta: float) -> float:
    """EMA factor of the step that ends at ``t_next``: (1 - t_delta / t_next)^(gamma + 1) (EDM2
    eq. 127); 0 for the first step (``t_next == t_delta``), which copies the weights."""
    return float((1 - t_delta / t_next) ** (gamma + 1))


def power_function_inner_products(t_a: Any, gamma_a: Any, t_b: Any, gamma_b: Any) -> np.ndarray:
    """<p_{t_a,g_a}, p_{t_b,g_b}> = integral over tau of the product of the two profiles
    (broadcast):

        (g_a + 1)(g_b + 1) / ((g_a + g_b + 1) max(t_a, t_b))
            * (t_a / t_b)^(g_b if t_a < t_b else -g_a)

    (EDM2 eq. 151, algorithm 3)."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64)
                                  for v in (t_a, gamma_a, t_b, gamma_b))
    exponent = np.where(t_a < t_b, gamma_b, -gamma_a)
    num = (gamma_a + 1) * (gamma_b + 1) * (t_a / t_b) ** exponent
    return num / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_posthoc_coefficients(t_in: Sequence[float], gamma_in: Sequence[float],
                               t_out: Sequence[float], gamma_out: Sequence[float]) -> np.ndarray:
    """Coefficients (n_in, n_out) of the snapshots' profiles whose sums are closest, in L2, to each
    output profile: the least-squares solution of A x = b, A_ij = <p_i, p_j>, b_i = <p_i, p_out>
    (EDM2 algorithm 3), each column then scaled to sum 1 so that weights that never changed stay as
    they are."""
    rows = lambda x: np.asarray(x, dtype=np.float64).reshape(-1, 1)  # noqa: E731
    cols = lambda x: np.asarray(x, dtype=np.float64).reshape(1, -1)  # noqa: E731
    gram = power_function_inner_products(rows(t_in), rows(gamma_in),
                                         cols(t_in), cols(gamma_in))  # (in, in)
    target = power_function_inner_products(rows(t_in), rows(gamma_in),
                                           cols(t_out), cols(gamma_out))  # (in, out)
    x = np.linalg.lstsq(gram, target, rcond=None)[0]
    return x / x.sum(axis=0, keepdims=True)


def profile_fit_error(t_in: Sequence[float], gamma_in: Sequence[float], t_out: float, gamma_out: float,
                      coefficients: Sequence[float]) -> float:
    """How far the snapshots' combination lies from the profile it reconstructs: the relative L2 error
    ``||sum_i c_i p_i - p_out|| / ||p_out||``, in closed form from the inner products
    (:func:`power_function_inner_products`). Near 0 when the snapshots span the profile; large for a
    length far shorter than the stored profiles with too few snapshots near the end."""
    t_in, gamma_in = np.asarray(t_in, dtype=np.float64), np.asarray(gamma_in, dtype=np.float64)
    c = np.asarray(coefficients, dtype=np.float64)
    gram = power_function_inner_products(t_in[:, None], gamma_in[:, None], t_in[None, :], gamma_in[None, :])
    cross = power_function_inner_products(t_in, gamma_in, t_out, gamma_out)
    norm2 = float(power_function_inner_products(t_out, gamma_out, t_out, gamma_out))
    err2 = float(c @ gram @ c - 2 * c @ cross + norm2)
    return float(np.sqrt(max(err2, 0.0) / norm2))


def fixed_decay_sigma_rel(decay: float, updates: int) -> float:
    """The relative std of the EMA ``memekit train`` keeps (decay_n = min(decay, (1 + n) /
    (10 + n)), the first update copies) after ``updates`` steps, the weights of step k sitting at
    tau = k / updates: where the fixed-decay EMA falls on the sigma_rel axis of a sweep."""
    n = np.arange(updates, dtype=np.float64)
    d = np.minimum(decay, (1 + n) / (10 + n))
    d[0] = 0.0  # the first update copies
    keep_after = np.concatenate([np.cumprod(d[::-1])[::-1][1:], [1.0]])  # prod_{j > k} d_j
    w = (1 - d) * keep_after  # weight of the weights after step k + 1
    tau = (n + 1) / updates
    mean = float(np.sum(w * tau))
    return float(np.sqrt(np.sum(w * (tau - mean) ** 2)))
