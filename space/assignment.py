"""Soft interval assignment for any intervals: from a training density over t to per-expert p_n.

MEME trains expert n on a t drawn from its own interval with probability p_n (otherwise from the
spec's out-of-interval rule), with p = (0.8, 0.4, 0.2, 0.1) chosen for four *uniform* intervals.
What such a p sets is the **in-interval density**: per training image of expert n, the chance that
it lands on one given step t of its interval is ``p_n / L_n`` (``L_n`` the interval's length). Kept
for other intervals, the same p_n changes that density: a short interval gets a denser, a long one
a sparser sampling (at 32 px the spectral prior's noisiest two experts fell from 0.4-0.8 to about
0.2 samples per step and 1,000 images, and starved).

The first rule (:func:`soft_assignment_for`) keeps the density instead of the probabilities:
given a target density ``d(t)`` (per image of the owning expert, per step),

    p_n = min(1, sum_{t in [b_n, b_{n+1})} d(t)),

the mass of the target density over the interval. :func:`paper_density` is the density the paper's
setting implies: ``d(t) = p_q / (T / N)`` for the uniform interval q holding t, with p_q the
paper's (0.8, 0.4, 0.2, 0.1) for N = 4 (geometric from 0.8 to 0.1 for other N,
:func:`paper_soft_assignment`). For uniform intervals the rule therefore gives back the paper's
values exactly; for other intervals every step is sampled as densely, per image of its expert,
as under ``meme-paper``.

The density alone is not enough (:func:`paper_soft_assignment_for`, what the spectral prior
uses): on a *short* interval it gives a small p_n, so the expert spends most of its training off
its own interval (the prior's [0, 50) at 32 px got p = 0.16: 84 % of the cleanest expert's images
were drawn at unrelated noise levels, which on the UTKFace 32 px proxy cost about 0.004 of validation
loss, more than the prior then gained over ``meme-paper``; ``benchmarks/RESULTS.md``). A uniform p
sets two things at once, and this rule keeps both as floors:

    p_n = min(1, max(p_n^paper, sum_{t in interval n} d(t))),

``p_n^paper`` the paper's probability for the n-th cleanest expert: the **fraction** of each
expert's training inside its interval never falls below the paper's, and the per-step
**density**, averaged over the interval, never falls below the paper's over the same steps. For
uniform intervals the two floors coincide
and give back the paper's values; a short interval is sampled more densely, a long one as densely
as under ``meme-paper``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import SpecError

PAPER_SOFT_ASSIGNMENT = (0.8, 0.4, 0.2, 0.1)
P_CLEANEST, P_NOISIEST = PAPER_SOFT_ASSIGNMENT[0], PAPER_SOFT_ASSIGNMENT[-1]


def paper_soft_assignment(n_experts: int) -> tuple[float, ...]:
    """The paper's ``p = (0.8, 0.4, 0.2, 0.1)`` for N = 4, generalised geometrically:
    ``p_n = 0.8 * (0.1 / 0.8)^(n / (N - 1))`` (lowest for the noisiest expert); ``(1.0,)`` for N = 1."""
    if n_experts == 1:
        return (1.0,)
    if n_experts == len(PAPER_SOFT_ASSIGNMENT):
        return PAPER_SOFT_ASSIGNMENT
    ratio = P_NOISIEST / P_CLEANEST
    return tuple(round(P_CLEANEST * ratio ** (n / (n_experts - 1)), 6) for n in range(n_experts))


def paper_density(timesteps: int, n_experts: int = 4) -> np.ndarray:
    """``d(t) = p_q / L_q`` over the paper's uniform intervals (``[q T // N, (q + 1) T // N)``):
    the in-interval density that ``meme-paper``'s soft assignment sets, shape (T,)."""
    p = paper_soft_assignment(n_experts)
    cuts = [k * timesteps // n_experts for k in range(n_experts + 1)]
    density = np.empty(timesteps)
    for q in range(n_experts):
        density[cuts[q]:cuts[q + 1]] = p[q] / (cuts[q + 1] - cuts[q])
    return density


def soft_assignment_for(intervals: Sequence[tuple[int, int]], density: np.ndarray,
                        digits: int = 6) -> tuple[float, ...]:
    """``p_n = min(1, sum of density over interval n)``, rounded to ``digits`` decimals (module
    docstring); a single expert gets 1."""
    d = np.asarray(density, dtype=np.float64)
    if d.ndim != 1 or len(d) != intervals[-1][1] or not np.all(np.isfinite(d)) or np.any(d < 0):
        raise SpecError(f"the training density must be {intervals[-1][1]} finite values >= 0, one per time-step")
    if len(intervals) == 1:
        return (1.0,)
    p = [min(1.0, round(float(d[lo:hi].sum()), digits)) for lo, hi in intervals]
    if min(p) <= 0:
        raise SpecError("the training density puts no mass on some interval: every p_n must be > 0")
    return tuple(p)


def in_interval_density(intervals: Sequence[tuple[int, int]], soft_assignment: Sequence[float]) -> np.ndarray:
    """``p_n / L_n`` at every t of interval n: how often one step is drawn per image of its own
    expert (in-interval draws only), shape (T,)."""
    out = np.empty(intervals[-1][1])
    for (lo, hi), p in zip(intervals, soft_assignment, strict=True):
        out[lo:hi] = p / (hi - lo)
    return out


def paper_soft_assignment_for(intervals: Sequence[tuple[int, int]], digits: int = 6) -> tuple[float, ...]:
    """``p_n = min(1, max(paper's p_n, paper density's mass over interval n))`` (module docstring):
    the paper's in-interval fraction and density, both kept as floors, for any N intervals."""
    mass = soft_assignment_for(intervals, paper_density(intervals[-1][1], len(intervals)), digits)
    return tuple(min(1.0, max(a, b)) for a, b in zip(paper_soft_assignment(len(intervals)), mass, strict=True))
