"""The spectral prior of a study and the warm start: baselines enqueued before the sampler proposes.

:func:`make_prior` measures the spectral prior spec of the study's training split (kept as
``STUDY_DIR/prior_spec.json`` by :func:`memekit.search.study.prepare_study`); :func:`warm_start_specs` rebuilds the chosen baselines (the prior,
``meme-paper``, ``multi-same``, ...) on the space's architecture, and :func:`enqueue_warm_start`
enqueues their nearest parameters (``study.enqueue_trial``), recording how far the projection moved.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import optuna

from memekit.analysis.data import load_data
from memekit.analysis.priors import prior_spec
from memekit.space import ExpertSpec, MemeSpec, get_preset, uniform_intervals

from .searchspace import SearchSpace, params_for, projection_gap, suggest_spec

if TYPE_CHECKING:
    from .study import SearchConfig

WARM_STARTS = ("prior", "meme-paper", "multi-same", "single-large", "single-small")


def make_prior(config: SearchConfig, space: SearchSpace) -> MemeSpec:
    """The spectral prior spec of (at most 2048 images of) the study's training split, on the space's
    architecture and diffusion (:func:`prior_base`), with the space's N and minimum length."""
    images = load_data(config.data, space.base_expert.resolution, split="train", limit=2048, progress=False)
    return prior_spec(images, space.n_experts[0], prior_base(space), min_length=space.min_length)


def prior_base(space: SearchSpace) -> MemeSpec:
    """``meme-paper``'s p_n and out-of-interval rule on the space's architecture and diffusion: the
    base from which the spectral prior takes everything but its intervals and shares."""
    base = get_preset("meme-paper", space.base_expert.resolution).with_image_channels(space.base_expert.image_channels)
    return dataclasses.replace(base, experts=(space.base_expert,) * base.n_experts, diffusion=space.diffusion)


def warm_start_specs(config: SearchConfig, space: SearchSpace, prior: MemeSpec | None) -> dict[str, MemeSpec]:
    """Baselines to enqueue first, each rebuilt on the space's base expert and resolution."""
    res = space.base_expert.resolution
    out: dict[str, MemeSpec] = {}
    for name in config.warm_start:
        if name == "prior":
            if prior is not None:
                out[name] = prior
            continue
        preset = _with_n_experts(get_preset(name, res).with_image_channels(space.base_expert.image_channels), space)
        if preset is None:
            continue
        experts = tuple(_in_space(e, space) for e in preset.experts)
        out[name] = dataclasses.replace(preset, experts=experts, diffusion=space.diffusion)
    return out


def _in_space(expert: ExpertSpec, space: SearchSpace) -> ExpertSpec:
    """The space's architecture with the preset expert's shares, and its width when the space
    searches widths (otherwise single-large and single-small coincide in the space)."""
    shares = _fit_shares(expert.attention_share, space)
    nearest = min(space.width_choices, key=lambda w: abs(w - expert.base_width)) if space.width_choices else None
    return dataclasses.replace(space.base_expert, attention_share=shares,
                               base_width=nearest or space.base_expert.base_width)


def _with_n_experts(preset: MemeSpec, space: SearchSpace) -> MemeSpec | None:
    """A multi-expert preset re-cut to the space's N (experts and p_n taken evenly from the
    lowest- to the highest-noise one, uniform intervals); None when the space cannot hold it."""
    if preset.n_experts in space.n_experts:
        return preset
    if preset.n_experts == 1 or 1 in space.n_experts and len(space.n_experts) == 1:
        return None
    n = max(space.n_experts)
    pick = [round(i * (preset.n_experts - 1) / max(n - 1, 1)) for i in range(n)]
    return dataclasses.replace(preset, experts=tuple(preset.experts[i] for i in pick),
                               soft_assignment=tuple(preset.soft_assignment[i] for i in pick),
                               intervals=uniform_intervals(preset.diffusion.timesteps, n))


def _fit_shares(shares: tuple[float, ...], space: SearchSpace) -> tuple[float, ...]:
    """A preset's per-stage shares resampled to the space's stage count (first/last kept)."""
    n = space.base_expert.n_stages
    if len(shares) == n:
        return shares
    idx = [round(i * (len(shares) - 1) / max(n - 1, 1)) for i in range(n)]
    return tuple(shares[i] for i in idx)


def enqueue_warm_start(study: optuna.Study, config: SearchConfig, space: SearchSpace, prior: MemeSpec | None) -> None:
    for name, spec in warm_start_specs(config, space, prior).items():
        params = params_for(spec, space, prior)
        gap = projection_gap(spec, suggest_spec(optuna.trial.FixedTrial(params), space, prior))
        study.enqueue_trial(params, user_attrs={"warm_start": name, "projection_gap": gap}, skip_if_exists=True)
