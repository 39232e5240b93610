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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from memekit.space import Diffusion, DiffusionSpec, ExpertSpec, MemeSpec, uniform_intervals
from memekit.space.assignment import paper_density, paper_soft_assignment, paper_soft_assignment_for
from memekit.space.errors import MemekitError
from memekit.space.spec import intervals_from_boundaries

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


def default_min_length(timesteps: int, n_intervals: int) -> int:
    """Default minimum interval length: a quarter of the uniform interval, ``T // (4 N)`` (>= 1)."""
    return max(1, timesteps // (4 * n_intervals))


def propose_intervals(profile: SpectralProfile, n_intervals: int, min_length: int | None = None,
                      equal_mass: bool = False) -> tuple[tuple[int, int], ...]:
    """Intervals from the DP segmentation of the Wiener-gain profile ``g(t, f)`` (module docstring),
    each ring weighted by its coefficient count, corners included; ``equal_mass``: instead, equal
    mass per interval under the paper's training density (:func:`equal_mass_boundaries`)."""
    if min_length is None:
        min_length = default_min_length(profile.timesteps, n_intervals)
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
    lo, hi = share_range
    if not 0.0 <= lo <= hi <= 1.0 or not 0.0 <= depth_weight <= 1.0:
        raise PriorError(f"need 0 <= share_min <= share_max <= 1 and 0 <= depth weight <= 1, got "
                         f"{share_range} and {depth_weight}")
    S = base.n_stages
    depth = np.arange(S) / (S - 1) if S > 1 else np.zeros(1)
    level = np.asarray(level, dtype=np.float64)
    level = level[:, None] if level.ndim == 1 else level
    raw = lo + (hi - lo) * ((1 - depth_weight) * level + depth_weight * depth[None, :])
    return tuple(_round_to_heads(row, base) for row in raw)


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
    level = interval_buried_fraction(profile, intervals, expert.n_stages)
    shares = attention_share_proposal(level, expert, share_range, depth_weight)
    p = paper_soft_assignment_for(intervals)
    out_of_interval = meme.out_of_interval if meme is not None else "uniform-complement"
    if n_experts == 1:
        out_of_interval = "uniform-all"
    experts = tuple(dataclasses.replace(expert, attention_share=s) for s in shares)
    return MemeSpec(experts=experts, intervals=intervals, soft_assignment=p, diffusion=diffusion_spec,
                    out_of_interval=out_of_interval, name=PRIOR_NAME)


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
    """Everything ``memekit spectrum`` computes: the profile, its tables and the prior spec."""

    profile: SpectralProfile
    summary: pd.DataFrame  # one row per t (spectra.summary_frame)
    spectrum: pd.DataFrame  # one row per (t, f) (spectra.spectrum_frame)
    prior: MemeSpec
    priors: pd.DataFrame  # one row per expert (prior_frame)
    uniform_boundaries: tuple[int, ...]


def spectral_report(images: np.ndarray | torch.Tensor, base: MemeSpec, n_experts: int,
                    min_length: int | None = None, batch_size: int = 256,
                    device: torch.device | str = "cpu", progress: bool = False,
                    equal_mass: bool = False) -> SpectralReport:
    """One pass over ``images`` under ``base``'s schedule, then every table and the prior spec."""
    alpha_bar = Diffusion(base.diffusion).alpha_bar
    profile = spectral_profile(images, alpha_bar, batch_size=batch_size, device=device, progress=progress)
    spec = prior_spec(profile, n_experts, base, min_length=min_length, equal_mass=equal_mass)
    uniform = uniform_intervals(profile.timesteps, n_experts)
    return SpectralReport(profile=profile, summary=summary_frame(profile), spectrum=spectrum_frame(profile),
                          prior=spec, priors=prior_frame(spec, profile),
                          uniform_boundaries=tuple(iv[0] for iv in uniform) + (profile.timesteps,))
