"""Search priors from the data's spectrum: time-step intervals and per-expert attention shares.

Two proposals, each a plain function of a :class:`~memekit.analysis.spectra.SpectralProfile`:

**Intervals.** The denoising task at step t is summarised by the per-frequency Wiener gain

    g(t, f) = SNR(t, f) / (1 + SNR(t, f)) = alpha_bar_t P_0(f) / E P_t(f)  in [0, 1],

the optimal linear denoiser's gain at f, i.e. the share of x_t's power at f that is signal. Two
steps with similar g face similar problems and can share an expert. Time-steps are cut into N
contiguous intervals ``[b_n, b_{n+1})`` minimising the total within-interval spread

    cost(l, r) = sum_{t in [l, r)} sum_k n_k (g(t, f_k) - mean_{s in [l, r)} g(s, f_k))^2

(sum over every integer-radius ring k of the FFT grid, the partial rings of the corners beyond the
Nyquist radius included, each weighted by its number of coefficients n_k: a ring counts in
proportion to the image's degrees of freedom it holds, so the many high-frequency coefficients
are not outvoted by the few low ones), by dynamic programming in O(N T^2) with prefix sums, subject to a
minimum interval length. This is ANT's interval clustering (Go et al. 2023, "Addressing negative
transfer in diffusion models", NeurIPS; there ``cost(l, r) = sum_t |SNR(t) - SNR(centre)|`` on the
scalar SNR) applied to a spectral profile. The log-SNR profile would not do: ``log SNR(t, f) =
log(alpha_bar_t / (1 - alpha_bar_t)) + log P_0(f)``, so its spread over an interval does not depend
on the data at all; g saturates at 0 and 1 and so depends on where the data's spectrum crosses
the noise floor.

**Attention shares.** Self-attention acts as a low-pass filter, convolution as a high-pass one
(MEME; Park & Kim 2022), and a U-Net stage s (of S, at ``R / 2^s`` px) works on the octave of
frequencies its resolution adds, ``[f_s / 2, f_s]`` with ``f_s = 0.5 / 2^s`` cycles per image pixel;
the deepest stage also holds every lower octave, down to one cycle per image (``[1 / R, f_{S-1}]``).
At step t the detail above the crossover ``f_c(t)`` is buried in noise (not recoverable), so a
stage whose band is buried has no high-frequency detail to restore and should mix globally,
while a stage whose band is still signal needs its convolutions. The **buried fraction** of
stage s at step t is the position of f_c in that stage's band ``[lo_s, hi_s]``, in octaves,

    beta(t, s) = clip(log2(hi_s / f_c(t)) / log2(hi_s / lo_s), 0, 1)   (1 when f_c = 0, 0 when f_c >= hi_s),

and expert n gets ``beta_ns = mean_{t in interval n} beta(t, s)``. Because each stage has its own
band, the four experts of a 32 or 64 px prior differ stage by stage (the older single level
``1 - f_c / f_max`` saturated near 1 for every interval but the first). Then

    share(n, s) = share_min + (share_max - share_min) * ((1 - w) beta_ns + w d_s),

with depth ``d_s = s / (S - 1)`` (0 for S = 1): MEME's two rules (more attention for noisier
intervals and, as in iFormer, for deeper stages), w weighing iFormer's depth rule against the
spectrum. Shares are rounded to whole heads of the base expert as in
``ExpertSpec.attention_channels`` (raised where rounding alone would give a deeper stage less
attention than the stage above it). Since f_c(t) is non-increasing in t, beta and every share are
non-decreasing in the noise level. In depth the two rules can disagree: once a noisy interval
has buried the finest band, the shallowest stage gets more attention than a deeper stage whose
band is still signal, and the proposal keeps that (it is what the spectrum says; the search
decides).

**Soft assignment.** The prior's p_n keep both things the paper's p = (0.8, 0.4, 0.2, 0.1) set
on uniform intervals, as floors (:func:`memekit.space.assignment.paper_soft_assignment_for`): the
fraction of each expert's training inside its interval and the per-step in-interval *density*.
The paper's probabilities alone would starve the prior's long, noisy intervals; the density alone
left the short, clean ones mostly trained off their interval (p = 0.16 on [0, 50) at 32 px).

**The minimum interval length** is derived, not fixed (:func:`min_length_for_steps`): the shortest
length at which every interval, wherever it lies, holds at least k (default 3) of the S DDIM steps
of the sampling trajectory (default 50, a study's ``sampling_steps``), so no expert serves fewer
than k steps. At T = 1000 that is 62 for S = 50 and 16 for S = 200.

**What the data changes.** The prior of a generic image set of the data's power-law slope
(:func:`generic_prior`: ``P(f) ~ f^-a`` with the data's fitted slope and total power) is what any
natural-looking data would get; :func:`prior_distance` says how far the data's own prior lies from
it, and :func:`binding_constraints` which rules (the minimum length, the p_n floors and cap, the
share order) rather than the spectrum set a value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from memekit.space import (
    Diffusion,
    DiffusionSpec,
    ExpertSpec,
    MemeSpec,
    ddim_timesteps,
    uniform_intervals,
)
from memekit.space.assignment import paper_density, paper_soft_assignment, paper_soft_assignment_for
from memekit.space.errors import MemekitError
from memekit.space.spec import intervals_from_boundaries
from memekit.space.trajectory import DEFAULT_MIN_STEPS, DEFAULT_SAMPLING_STEPS

from .spectra import SpectralProfile, snr, spectral_profile, spectrum_frame, summary_frame

PRIOR_NAME = "spectral-prior"
SHARE_RANGE = (0.25, 1.0)
DEPTH_WEIGHT = 0.5


class PriorError(MemekitError, ValueError):
    """A prior cannot be built from these arguments (e.g. N x min_length > T)."""


def wiener_gain(snr_tf: np.ndarray) -> np.ndarray:
    """``g = SNR / (1 + SNR)`` (inf SNR -> 1), the per-frequency Wiener filter gain."""
    s = np.asarray(snr_tf, dtype=np.float64)
    return np.where(np.isinf(s), 1.0, s / (1.0 + np.where(np.isinf(s), 0.0, s)))


def interval_costs(profile: np.ndarray, min_length: int = 1) -> np.ndarray:
    """``C[l, r]`` = within-interval sum of squared deviations of the rows ``profile[l:r]`` from
    their mean, for all ``0 <= l < r <= T`` (``inf`` where ``r - l < min_length``).

    With prefix sums ``S1[t] = sum_{s<t} v_s`` and ``S2[t] = sum_{s<t} |v_s|^2``:
    ``C[l, r] = S2[r] - S2[l] - |S1[r] - S1[l]|^2 / (r - l)``. ``profile``: (T, K) -> (T+1, T+1).
    """
    v = np.asarray(profile, dtype=np.float64)
    v = v - v.mean(axis=0)  # centring leaves C unchanged and limits cancellation
    T = len(v)
    s1 = np.concatenate([np.zeros((1, v.shape[1])), np.cumsum(v, axis=0)])  # (T+1, K)
    s2 = np.concatenate([[0.0], np.cumsum((v**2).sum(axis=1))])  # (T+1,)
    sq = (s1**2).sum(axis=1)
    cross = sq[:, None] + sq[None, :] - 2.0 * s1 @ s1.T  # |S1[r] - S1[l]|^2, (T+1, T+1)
    length = np.arange(T + 1)[None, :] - np.arange(T + 1)[:, None]  # r - l
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = s2[None, :] - s2[:, None] - cross / length
    cost = np.maximum(cost, 0.0)
    cost[length < max(min_length, 1)] = np.inf
    return cost


def segment_profile(profile: np.ndarray, n_intervals: int, min_length: int = 1) -> tuple[int, ...]:
    """Optimal contiguous segmentation of the rows of ``profile`` (T, K) into ``n_intervals``
    intervals of at least ``min_length`` rows, minimising the summed :func:`interval_costs`.

    Dynamic programming: ``D_n(r) = min_l D_{n-1}(l) + C[l, r]``, ``D_0(0) = 0``; ties go to the
    earliest cut. Returns the boundaries ``(0, b_1, ..., b_{N-1}, T)``.
    """
    T = len(profile)
    if not isinstance(n_intervals, int) or n_intervals < 1:
        raise PriorError(f"number of intervals must be a positive integer, got {n_intervals!r}")
    if n_intervals * max(min_length, 1) > T:
        raise PriorError(f"{n_intervals} intervals of at least {min_length} steps do not fit in T = {T}: "
                         "lower --n-experts or the minimum interval length")
    cost = interval_costs(profile, min_length)
    best = np.full(T + 1, np.inf)
    best[0] = 0.0
    back = np.zeros((n_intervals + 1, T + 1), dtype=np.int64)
    for n in range(1, n_intervals + 1):
        total = best[:, None] + cost  # (l, r): best split of [0, l) into n-1 parts, then [l, r)
        back[n] = np.argmin(total, axis=0)
        best = total[back[n], np.arange(T + 1)]
    cuts = [T]
    for n in range(n_intervals, 0, -1):
        cuts.append(int(back[n][cuts[-1]]))
    return tuple(reversed(cuts))


def min_length_for_steps(timesteps: int, sampling_steps: int = DEFAULT_SAMPLING_STEPS,
                         min_steps: int = DEFAULT_MIN_STEPS) -> int:
    """The minimum interval length: the shortest ``L`` such that **every** interval ``[b, b + L)`` of
    ``[0, T)`` holds at least ``k = min_steps`` of the ``S = sampling_steps`` DDIM steps
    (:func:`memekit.space.ddim_timesteps`; S above T counts as T), so every expert serves at least
    k steps of the sampling trajectory wherever its interval lies.

    An interval misses its k-th step exactly when it fits strictly between two steps ``t_i`` and
    ``t_{i+k}`` k apart (holding only the k - 1 between them), so with the ascending steps extended
    by ``t_{-1} = -1`` and ``t_S = T`` (the ends of ``[0, T)``): ``L = max_i (t_{i+k} - t_i)``. For
    evenly spaced steps ``t_i = i D`` that is ``k D``; T = 1000, S = 50, k = 3 gives 62 (the steps
    are 20 or 21 apart), the old fixed default ``T // (4 N)`` for N = 4; S = 200 (the paper's
    protocol) gives 16.
    """
    if not (isinstance(min_steps, int) and min_steps >= 1 and isinstance(sampling_steps, int) and sampling_steps >= 1):
        raise PriorError(f"the minimum length needs >= 1 sampling step and >= 1 step per interval, got "
                         f"{sampling_steps!r} and {min_steps!r}")
    steps = min(sampling_steps, timesteps)
    if min_steps > steps:
        raise PriorError(f"an interval cannot hold {min_steps} of {steps} sampling steps: lower --min-steps or "
                         "raise --sampling-steps")
    extended = [-1, *sorted(ddim_timesteps(timesteps, steps)), timesteps]
    return max(extended[i + min_steps] - extended[i] for i in range(len(extended) - min_steps))


def propose_intervals(profile: SpectralProfile, n_intervals: int, min_length: int | None = None,
                      equal_mass: bool = False) -> tuple[tuple[int, int], ...]:
    """Intervals from the DP segmentation of the Wiener-gain profile ``g(t, f)`` (module docstring),
    each ring weighted by its coefficient count, corners included; ``equal_mass``: instead, equal
    mass per interval under the paper's training density (:func:`equal_mass_boundaries`)."""
    if min_length is None:
        min_length = min_length_for_steps(profile.timesteps)
    if equal_mass:
        return intervals_from_boundaries(equal_mass_boundaries(paper_density(profile.timesteps, 4), n_intervals,
                                                               min_length))
    boundaries = segment_profile(weighted_gain_profile(profile), n_intervals, min_length)
    return intervals_from_boundaries(boundaries)


def weighted_gain_profile(profile: SpectralProfile) -> np.ndarray:
    """``sqrt(n_k) g(t, f_k)`` over every ring (corners included), shape (T, K'): squared distances
    between rows then weigh each ring by its coefficient count ``n_k``, i.e. by its share of the
    image's degrees of freedom (unweighted, the few coefficients of the low rings counted as much as
    the many of the high ones)."""
    _, counts, power = profile.all_rings
    return wiener_gain(snr(power, profile.alpha_bar)) * np.sqrt(counts)[None, :]


def equal_mass_boundaries(density: np.ndarray, n_intervals: int, min_length: int = 1) -> tuple[int, ...]:
    """Boundaries ``(0, b_1, ..., T)`` cutting ``density`` (T,) into intervals of equal mass (each cut
    at the first step where the cumulative mass reaches k / N of the total), then moved the least
    so every interval keeps ``min_length`` steps."""
    T = len(density)
    if n_intervals * max(min_length, 1) > T:
        raise PriorError(f"{n_intervals} intervals of at least {min_length} steps do not fit in T = {T}")
    cumulative = np.cumsum(density) / np.sum(density)
    cuts = [int(np.searchsorted(cumulative, k / n_intervals - 1e-12)) + 1 for k in range(1, n_intervals)]
    out: list[int] = []
    for k, c in enumerate(cuts, start=1):
        low = (out[-1] if out else 0) + min_length
        out.append(min(max(c, low), T - (n_intervals - k) * min_length))
    return (0, *out, T)


def low_pass_level(profile: SpectralProfile) -> np.ndarray:
    """``rho(t) = 1 - f_c(t) / f_max`` in [0, 1], non-decreasing in t, shape (T,) (a one-number
    summary, reported beside the per-stage :func:`buried_fraction`)."""
    f_c, _ = profile.crossover()
    return 1.0 - f_c / profile.frequency[-1]


def interval_low_pass_level(profile: SpectralProfile, intervals: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``rho_n``: :func:`low_pass_level` averaged over each interval, shape (N,)."""
    rho = low_pass_level(profile)
    return np.array([rho[lo:hi].mean() for lo, hi in intervals])


def stage_bands(resolution: int, n_stages: int) -> np.ndarray:
    """``(lo_s, hi_s)`` per stage, cycles per image pixel: ``[f_s / 2, f_s]``, ``f_s = 0.5 / 2^s``, and
    ``[1 / R, f_{S-1}]`` for the deepest stage, shape (S, 2)."""
    hi = 0.5 / 2.0 ** np.arange(n_stages)
    lo = hi / 2
    lo[-1] = min(1.0 / resolution, lo[-1])
    return np.stack([lo, hi], axis=1)


def buried_fraction(profile: SpectralProfile, n_stages: int) -> np.ndarray:
    """``beta(t, s) = clip(log2(hi_s / f_c(t)) / log2(hi_s / lo_s), 0, 1)`` over :func:`stage_bands`
    (module docstring): how much of stage s's band is buried in noise at step t, shape (T, S)."""
    f_c, _ = profile.crossover()
    bands = stage_bands(profile.resolution, n_stages)
    with np.errstate(divide="ignore"):
        octaves = np.log2(bands[None, :, 1] / f_c[:, None])  # +inf where f_c = 0
    return np.clip(octaves / np.log2(bands[:, 1] / bands[:, 0])[None, :], 0.0, 1.0)


def interval_buried_fraction(profile: SpectralProfile, intervals: tuple[tuple[int, int], ...],
                             n_stages: int) -> np.ndarray:
    """``beta_ns``: :func:`buried_fraction` averaged over each interval, shape (N, S)."""
    beta = buried_fraction(profile, n_stages)
    return np.stack([beta[lo:hi].mean(axis=0) for lo, hi in intervals])


def _round_to_heads(shares: np.ndarray, base: ExpertSpec) -> tuple[float, ...]:
    """Per-stage shares -> built shares ``heads * head_dim / width`` (``ExpertSpec.attention_channels``
    rounding); where the proposed share of a stage is at least its shallower neighbour's, the built
    one is raised to at least that neighbour's (next whole head up), so rounding never inverts an
    order the proposal had."""
    built: list[float] = []
    raw = np.clip(shares, 0.0, 1.0)
    for s, share in enumerate(raw):
        width = base.stage_width(s)
        heads = math.floor(share * width / base.head_dim + 0.5)
        if built and share >= raw[s - 1]:
            heads = max(heads, math.ceil(built[-1] * width / base.head_dim - 1e-9))
        built.append(heads * base.head_dim / width)
    return tuple(built)


def attention_share_proposal(level: np.ndarray, base: ExpertSpec, share_range: tuple[float, float] = SHARE_RANGE,
                             depth_weight: float = DEPTH_WEIGHT) -> tuple[tuple[float, ...], ...]:
    """Per expert (rows, lowest noise first) and stage: ``share_min + (share_max - share_min) *
    ((1 - w) level_ns + w d_s)``, rounded to ``base``'s head grid (module docstring). ``level``:
    (N, S) buried fractions (:func:`interval_buried_fraction`), or (N,) one level per expert for
    every stage."""
    return tuple(_round_to_heads(row, base) for row in raw_attention_shares(level, base.n_stages, share_range,
                                                                           depth_weight))


def raw_attention_shares(level: np.ndarray, n_stages: int, share_range: tuple[float, float] = SHARE_RANGE,
                         depth_weight: float = DEPTH_WEIGHT) -> np.ndarray:
    """``share_min + (share_max - share_min) * ((1 - w) level_ns + w d_s)`` before rounding to heads,
    shape (N, S) (``level``: (N, S), or (N,) for every stage)."""
    lo, hi = share_range
    if not 0.0 <= lo <= hi <= 1.0 or not 0.0 <= depth_weight <= 1.0:
        raise PriorError(f"need 0 <= share_min <= share_max <= 1 and 0 <= depth weight <= 1, got "
                         f"{share_range} and {depth_weight}")
    depth = np.arange(n_stages) / (n_stages - 1) if n_stages > 1 else np.zeros(1)
    level = np.asarray(level, dtype=np.float64)
    level = level[:, None] if level.ndim == 1 else level
    return lo + (hi - lo) * ((1 - depth_weight) * level + depth_weight * depth[None, :])


def soft_assignment_prior(n_experts: int) -> tuple[float, ...]:
    """The paper's ``p = (0.8, 0.4, 0.2, 0.1)`` for N = 4, generalised geometrically (see
    :func:`memekit.space.assignment.paper_soft_assignment`)."""
    return paper_soft_assignment(n_experts)


def _base_parts(base: MemeSpec | ExpertSpec) -> tuple[ExpertSpec, MemeSpec | None]:
    if isinstance(base, MemeSpec):
        return base.experts[0], base
    if isinstance(base, ExpertSpec):
        return base, None
    raise PriorError(f"base must be a MemeSpec or an ExpertSpec, got {type(base).__name__}")


def prior_spec(data: SpectralProfile | np.ndarray | torch.Tensor, n_experts: int,
               base: MemeSpec | ExpertSpec, min_length: int | None = None,
               share_range: tuple[float, float] = SHARE_RANGE, depth_weight: float = DEPTH_WEIGHT,
               equal_mass: bool = False) -> MemeSpec:
    """The spectral prior as a full :class:`MemeSpec` named ``"spectral-prior"``.

    ``data``: a :class:`SpectralProfile` or images (uint8 NHWC or float NCHW in [-1, 1]). The
    profile is re-evaluated under ``base``'s diffusion schedule. ``base`` supplies the expert
    architecture (widths, stages, head grid, pools; a MemeSpec's first expert), the diffusion spec
    and ``out_of_interval``. Intervals: :func:`propose_intervals`; shares:
    :func:`attention_share_proposal` of :func:`interval_buried_fraction`; p_n: the paper's
    in-interval fraction and density kept as floors on these intervals (module docstring).
    """
    expert, meme = _base_parts(base)
    diffusion_spec = meme.diffusion if meme is not None else DiffusionSpec()
    alpha_bar = Diffusion(diffusion_spec).alpha_bar
    profile = data if isinstance(data, SpectralProfile) else spectral_profile(data, alpha_bar)
    profile = profile.with_alpha_bar(alpha_bar)
    if profile.resolution != expert.resolution:
        raise PriorError(f"the base expert is at {expert.resolution} px but the data spectrum at "
                         f"{profile.resolution} px: build the base spec at {profile.resolution} px")
    intervals = propose_intervals(profile, n_experts, min_length, equal_mass)
    p = paper_soft_assignment_for(intervals)
    out_of_interval = meme.out_of_interval if meme is not None else "uniform-complement"
    if n_experts == 1:
        out_of_interval = "uniform-all"
    experts = _experts_for(profile, intervals, expert, share_range, depth_weight)
    return MemeSpec(experts=experts, intervals=intervals, soft_assignment=p, diffusion=diffusion_spec,
                    out_of_interval=out_of_interval, name=PRIOR_NAME)


def _experts_for(profile: SpectralProfile, intervals: tuple[tuple[int, int], ...], expert: ExpertSpec,
                 share_range: tuple[float, float], depth_weight: float) -> tuple[ExpertSpec, ...]:
    level = interval_buried_fraction(profile, intervals, expert.n_stages)
    shares = attention_share_proposal(level, expert, share_range, depth_weight)
    return tuple(dataclasses.replace(expert, attention_share=s) for s in shares)


def recut_prior(prior: MemeSpec, profile: SpectralProfile, expert: ExpertSpec, diffusion: DiffusionSpec,
                share_range: tuple[float, float] = SHARE_RANGE, depth_weight: float = DEPTH_WEIGHT) -> MemeSpec:
    """``prior`` on another backbone: its intervals, p_n and out-of-interval rule kept, the shares
    proposed again for ``expert``'s stages and head grid from the same data (``profile``, under
    ``diffusion``'s schedule, which must have the prior's T and schedule), every expert ``expert``."""
    if (diffusion.timesteps, diffusion.schedule) != (prior.diffusion.timesteps, prior.diffusion.schedule):
        raise PriorError(f"the prior was cut for T = {prior.diffusion.timesteps} ({prior.diffusion.schedule}), "
                         f"the backbone has T = {diffusion.timesteps} ({diffusion.schedule}): run memekit spectrum "
                         "with the backbone's schedule")
    profile = profile.with_alpha_bar(Diffusion(diffusion).alpha_bar)
    if profile.resolution != expert.resolution:
        raise PriorError(f"the prior's spectrum is at {profile.resolution} px, the backbone at {expert.resolution} px: "
                         f"run memekit spectrum at --resolution {expert.resolution}")
    experts = _experts_for(profile, prior.intervals, expert, share_range, depth_weight)
    return dataclasses.replace(prior, experts=experts, diffusion=diffusion)


# ---- what the data changes: the generic prior, and the constraints that bind -----------------------
def generic_prior(profile: SpectralProfile, n_experts: int, base: MemeSpec | ExpertSpec,
                  min_length: int | None = None, equal_mass: bool = False) -> MemeSpec:
    """The prior of a generic image set of the data's slope: :func:`prior_spec` of
    :meth:`SpectralProfile.power_law_reference` (``P(f) ~ f^-a`` with the data's fitted slope and total
    power, the same channels), with the same settings. Where the data's prior differs from it, the
    data's spectrum departs from a power law."""
    return prior_spec(profile.power_law_reference(), n_experts, base, min_length=min_length, equal_mass=equal_mass)


class PriorDistance(NamedTuple):
    """How far prior ``a`` lies from prior ``b`` (:func:`prior_distance`), every entry ``a - b``."""

    boundaries: tuple[int, ...]  # interior boundaries, in steps
    p: tuple[float, ...]  # per expert
    shares: tuple[tuple[float, ...], ...]  # per expert, per stage

    @property
    def boundary_steps(self) -> int:
        """The largest move of a cut, in steps."""
        return max((abs(b) for b in self.boundaries), default=0)

    @property
    def max_p(self) -> float:
        return max(abs(v) for v in self.p)

    @property
    def max_share(self) -> float:
        return max(abs(v) for row in self.shares for v in row)

    @property
    def shares_changed(self) -> int:
        """How many (expert, stage) shares differ."""
        return sum(v != 0 for row in self.shares for v in row)


def prior_distance(a: MemeSpec, b: MemeSpec) -> PriorDistance:
    """``a - b`` boundary by boundary (steps), p_n by p_n and share by share, for two priors of the
    same N and stage count."""
    if a.n_experts != b.n_experts or a.experts[0].n_stages != b.experts[0].n_stages:
        raise PriorError(f"priors of {a.n_experts} and {b.n_experts} experts, {a.experts[0].n_stages} and "
                         f"{b.experts[0].n_stages} stages cannot be compared: cut both with the same settings")
    shares = tuple(tuple(x - y for x, y in zip(e.attention_share, f.attention_share, strict=True))
                   for e, f in zip(a.experts, b.experts, strict=True))
    return PriorDistance(tuple(x - y for x, y in zip(a.boundaries[1:-1], b.boundaries[1:-1], strict=True)),
                         tuple(x - y for x, y in zip(a.soft_assignment, b.soft_assignment, strict=True)), shares)


class BindingConstraint(NamedTuple):
    """A constraint of the prior's rules that changes the prior (:func:`binding_constraints`)."""

    kind: str  # "min_length", "p_fraction_floor", "p_cap" or "share_order"
    expert: int  # the interval / expert it acts on
    stage: int | None  # share_order: the stage
    value: float  # what the prior holds: the interval's length, the expert's p_n, the stage's share
    unconstrained: float  # what the rule gives without it (min_length: the interval's length)
    detail: str = ""  # min_length: the cuts without the minimum

    @property
    def text(self) -> str:
        if self.kind == "min_length":
            return (f"interval {self.expert} has the minimum length {self.value:g}: the constraint binds; without it "
                    f"(minimum 1 step) the cuts fall at {self.detail}")
        if self.kind == "p_fraction_floor":
            return (f"p_{self.expert} = {self.value:g} is the paper's in-interval fraction (a floor): it binds; the "
                    f"paper's per-step density alone gives {self.unconstrained:.3g}")
        if self.kind == "p_cap":
            return (f"p_{self.expert} is capped at 1: the paper's density over its interval sums to "
                    f"{self.unconstrained:.3g}")
        return (f"expert {self.expert} stage {self.stage}: share {self.value:g} instead of {self.unconstrained:g} (its "
                "rounding to heads) so a deeper stage keeps at least the attention of the stage above it: the "
                "order constraint binds")


def binding_constraints(profile: SpectralProfile, prior: MemeSpec, min_length: int, equal_mass: bool = False,
                        share_range: tuple[float, float] = SHARE_RANGE,
                        depth_weight: float = DEPTH_WEIGHT) -> tuple[BindingConstraint, ...]:
    """Every constraint of the prior's rules that moves ``prior`` (made by :func:`prior_spec` from
    ``profile`` with ``min_length``) away from what the rule alone proposes:

    - ``min_length``: an interval has exactly the minimum length and the segmentation without a
      minimum (1 step) cuts elsewhere (an interval at the minimum that the unconstrained optimum
      also chooses does not bind);
    - ``p_fraction_floor``: p_n is the paper's in-interval fraction, above the paper density's mass
      over the interval (:func:`memekit.space.assignment.paper_soft_assignment_for`); ``p_cap``: that
      mass exceeds 1;
    - ``share_order``: a stage's share was raised above its rounding to whole heads to keep the
      depth order (:func:`attention_share_proposal`).
    """
    profile = profile.with_alpha_bar(Diffusion(prior.diffusion).alpha_bar)
    out = _min_length_binds(profile, prior, min_length, equal_mass)
    T, n = prior.diffusion.timesteps, prior.n_experts
    density, paper = paper_density(T, n), paper_soft_assignment(n)
    for e, ((lo, hi), p) in enumerate(zip(prior.intervals, prior.soft_assignment, strict=True)):
        mass = float(density[lo:hi].sum())
        if n > 1 and mass > 1 + 1e-9:
            out.append(BindingConstraint("p_cap", e, None, p, mass))
        elif n > 1 and paper[e] > mass + 1e-9:
            out.append(BindingConstraint("p_fraction_floor", e, None, p, mass))
    base = prior.experts[0]
    raw = raw_attention_shares(interval_buried_fraction(profile, prior.intervals, base.n_stages), base.n_stages,
                               share_range, depth_weight)
    for e, expert in enumerate(prior.experts):
        for s, share in enumerate(expert.attention_share):
            width = base.stage_width(s)
            rounded = math.floor(min(max(raw[e, s], 0.0), 1.0) * width / base.head_dim + 0.5) * base.head_dim / width
            if share > rounded + 1e-12:
                out.append(BindingConstraint("share_order", e, s, share, rounded))
    return tuple(out)


def _min_length_binds(profile: SpectralProfile, prior: MemeSpec, min_length: int,
                      equal_mass: bool) -> list[BindingConstraint]:
    at_minimum = [e for e, (lo, hi) in enumerate(prior.intervals) if hi - lo == min_length]
    if not at_minimum:
        return []
    free = propose_intervals(profile, prior.n_experts, 1, equal_mass)
    if free == prior.intervals:
        return []
    cuts = str([iv[0] for iv in free] + [free[-1][1]])
    return [BindingConstraint("min_length", e, None, min_length, free[e][1] - free[e][0], cuts) for e in at_minimum]


def prior_frame(spec: MemeSpec, profile: SpectralProfile) -> pd.DataFrame:
    """One row per expert: proposed and uniform interval, ``rho_n``, p_n (beside the paper's for that
    rank) and its in-interval density (draws of one step per 1,000 images of the expert, beside
    ``meme-paper``'s over the same steps), the per-stage buried fractions and the built shares."""
    uniform = uniform_intervals(profile.timesteps, spec.n_experts)
    profile = profile.with_alpha_bar(Diffusion(spec.diffusion).alpha_bar)
    rho = interval_low_pass_level(profile, spec.intervals)
    beta = interval_buried_fraction(profile, spec.intervals, spec.experts[0].n_stages)
    paper, paper_p = paper_density(profile.timesteps, spec.n_experts), paper_soft_assignment(spec.n_experts)
    rows = []
    for n, (expert, iv, uv) in enumerate(zip(spec.experts, spec.intervals, uniform, strict=True)):
        row = {"expert": n, "start": iv[0], "end": iv[1], "uniform_start": uv[0], "uniform_end": uv[1],
               "low_pass_level": rho[n], "p": spec.soft_assignment[n], "paper_p": paper_p[n],
               "density_per_1k": 1000 * spec.soft_assignment[n] / (iv[1] - iv[0]),
               "paper_density_per_1k": 1000 * float(paper[iv[0]:iv[1]].mean())}
        row.update({f"buried_stage{s}": v for s, v in enumerate(beta[n])})
        row.update({f"share_stage{s}": v for s, v in enumerate(expert.effective_attention_share())})
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True, eq=False)
class SpectralReport:
    """Everything ``memekit spectrum`` computes: the profile, its tables, the prior spec, the prior
    of a generic image set of the same slope and how far the data's lies from it, and the
    constraints that bind."""

    profile: SpectralProfile
    summary: pd.DataFrame  # one row per t (spectra.summary_frame)
    spectrum: pd.DataFrame  # one row per (t, f) (spectra.spectrum_frame)
    prior: MemeSpec
    priors: pd.DataFrame  # one row per expert (prior_frame)
    uniform_boundaries: tuple[int, ...]
    min_length: int = 1  # of the intervals (given, or min_length_for_steps)
    generic: MemeSpec | None = None  # generic_prior: a power law of the data's slope
    distance: PriorDistance | None = None  # prior - generic
    constraints: tuple[BindingConstraint, ...] = ()  # binding_constraints of the prior


def spectral_report(images: np.ndarray | torch.Tensor, base: MemeSpec, n_experts: int,
                    min_length: int | None = None, batch_size: int = 256,
                    device: torch.device | str = "cpu", progress: bool = False,
                    equal_mass: bool = False) -> SpectralReport:
    """One pass over ``images`` under ``base``'s schedule, then every table, the prior spec (at least
    ``min_length`` steps per interval, default :func:`min_length_for_steps`), the generic prior, the
    distance between the two and the binding constraints."""
    alpha_bar = Diffusion(base.diffusion).alpha_bar
    profile = spectral_profile(images, alpha_bar, batch_size=batch_size, device=device, progress=progress)
    min_length = min_length or min_length_for_steps(profile.timesteps)
    spec = prior_spec(profile, n_experts, base, min_length=min_length, equal_mass=equal_mass)
    generic = generic_prior(profile, n_experts, base, min_length=min_length, equal_mass=equal_mass)
    uniform = uniform_intervals(profile.timesteps, n_experts)
    return SpectralReport(profile=profile, summary=summary_frame(profile), spectrum=spectrum_frame(profile),
                          prior=spec, priors=prior_frame(spec, profile),
                          uniform_boundaries=tuple(iv[0] for iv in uniform) + (profile.timesteps,),
                          min_length=min_length, generic=generic, distance=prior_distance(spec, generic),
                          constraints=binding_constraints(profile, spec, min_length, equal_mass))
