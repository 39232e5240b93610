"""The spectral prior of a study and the warm start: baselines enqueued before the sampler proposes.

:func:`study_prior` decides the study's prior once, when the study is made, and says where it came
from (kept as ``STUDY_DIR/prior_spec.json`` and ``STUDY_DIR/prior_source.json`` by
:func:`memekit.search.study.prepare_study`; a resumed study keeps both): the spectrum step's prior
(``memekit search --prior DIR/prior_spec.json``, :func:`load_prior`, re-cut to the space's backbone
when it was cut for another one), or else one recomputed from the study's training split
(:func:`recompute_prior`). Either way its intervals are at least :func:`study_min_length` long.
:func:`warm_start_specs` rebuilds the chosen baselines (the prior, ``meme-paper``, ``multi-same``,
...) on the space's architecture, and :func:`enqueue_warm_start` enqueues their nearest parameters
(``study.enqueue_trial``), recording how far the projection moved (:func:`warm_start_label` says it
beside the name). :func:`startup_note` warns when a study is too short for its sampler to use the
data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import optuna

from memekit.analysis.data import load_data
from memekit.analysis.priors import (
    DEFAULT_MIN_STEPS,
    binding_constraints,
    min_length_for_steps,
    prior_spec,
    propose_intervals,
    recut_prior,
)
from memekit.analysis.spectra import spectral_profile
from memekit.space import Diffusion, ExpertSpec, MemeSpec, get_preset, load_spec, uniform_intervals
from memekit.space.errors import MemekitError, SpecError

from .heartbeat import queue_trial

# WARM_STARTS is re-exported: the names a SearchConfig accepts live beside it
from .search_config import WARM_STARTS as WARM_STARTS
from .search_config import SearchConfig
from .searchspace import SearchSpace, params_for, projection_gap, suggest_spec

PRIOR_IMAGES = 2048  # images of the training split a recomputed prior measures
# sampler -> trials drawn at random before it models the data (memekit.search.study.make_sampler)
SAMPLER_STARTUP = {"tpe": 10, "gp": 10, "nsga2": 20}


class PriorFileError(MemekitError, ValueError):
    """A ``--prior`` file cannot seed this study."""


def study_min_length(config: SearchConfig, space: SearchSpace) -> tuple[int, str]:
    """The minimum interval length of the study's prior and its rule: the shortest interval that holds
    3 of the study's ``sampling_steps`` DDIM steps wherever it lies
    (:func:`memekit.analysis.priors.min_length_for_steps`), or the space's ``min_length`` when that is
    longer (the space cannot hold shorter intervals)."""
    T = space.diffusion.timesteps
    derived = min_length_for_steps(T, config.sampling_steps, DEFAULT_MIN_STEPS)
    rule = (f"the shortest interval that holds {DEFAULT_MIN_STEPS} of the {min(config.sampling_steps, T)} DDIM "
            "steps wherever it lies")
    if space.min_length > derived:
        return space.min_length, f"the space's min_length (above the {derived} steps of {rule})"
    return derived, rule


def make_prior(config: SearchConfig, space: SearchSpace) -> MemeSpec:
    """The spectral prior spec of (at most 2048 images of) the study's training split, on the space's
    architecture and diffusion (:func:`prior_base`), with the space's N and :func:`study_min_length`."""
    return recompute_prior(config, space)[0]


def recompute_prior(config: SearchConfig, space: SearchSpace) -> tuple[MemeSpec, dict[str, Any]]:
    """:func:`make_prior` and its source record (what :func:`prior_source_text` reads): the data, its
    split and image count, the resolution, the minimum length and its rule, the binding constraints."""
    # what compositing did was said when the study's data was checked (memekit.search.study.plan_study)
    images = load_data(config.data, space.base_expert.resolution, split="train", limit=PRIOR_IMAGES, progress=False,
                       background=config.background, say=lambda line: None)
    profile = spectral_profile(images, Diffusion(space.diffusion).alpha_bar)
    min_length, rule = study_min_length(config, space)
    prior = prior_spec(profile, space.n_experts[0], prior_base(space), min_length=min_length)
    constraints = [c.text for c in binding_constraints(profile, prior, min_length)]
    derived = min_length_for_steps(space.diffusion.timesteps, config.sampling_steps, DEFAULT_MIN_STEPS)
    if min_length > derived:
        cut = propose_intervals(profile, prior.n_experts, derived)
        if cut != prior.intervals:
            constraints.append(f"the space's min_length {min_length} binds: with the derived {derived} the cuts "
                               f"would fall at {[iv[0] for iv in cut] + [cut[-1][1]]}")
    return prior, {"source": "recomputed", "data": config.data, "split": "train", "images": len(images),
                   "resolution": space.base_expert.resolution, "min_length": min_length, "min_length_rule": rule,
                   "boundaries": list(prior.boundaries), "constraints": constraints}


def load_prior(path: str | Path, config: SearchConfig, space: SearchSpace) -> tuple[MemeSpec, dict[str, Any]]:
    """The prior of ``memekit spectrum`` (``DIR/prior_spec.json``) for the study: its intervals and p_n,
    its shares kept when it was cut for the space's backbone, else proposed again for the space's
    stages and head grid from the same data (``DIR/spectrum.npz``), on the space's diffusion; and its
    source record (the file and its SHA-256, the data, resolution and minimum length the spectrum
    step used, the binding constraints). One-line :class:`PriorFileError` when the file cannot seed
    the study."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PriorFileError(f"--prior {str(file)!r} does not exist: give the prior_spec.json that 'memekit spectrum "
                             "DATA --out DIR' wrote")
    try:
        prior = load_spec(file)
    except SpecError as err:
        raise PriorFileError(f"--prior: {err}") from None
    _check_prior_fits(prior, file, space)
    folder = file.parent
    spectrum = _spectrum_files(folder)
    base = space.base_expert
    profile = None
    if all(_same_backbone(e, base) for e in prior.experts):
        recut = dataclasses.replace(prior, experts=tuple(dataclasses.replace(base, attention_share=e.attention_share)
                                                         for e in prior.experts), diffusion=space.diffusion)
        how = None
    elif (folder / "spectrum.npz").is_file():
        from memekit.analysis.reports import read_profile

        profile = read_profile(folder)
        recut = recut_prior(prior, profile, base, space.diffusion)
        how = (f"shares proposed again for the space's {base.n_stages}-stage backbone (head_dim {base.head_dim}) from "
               f"{folder / 'spectrum.npz'}; intervals and p_n as in the file")
    else:
        raise PriorFileError(f"{file} was cut for another backbone than the space's and has no spectrum.npz beside it "
                             "to re-cut it: give the prior_spec.json of a memekit spectrum folder")
    min_length = spectrum["config"].get("min_length")
    constraints = spectrum["report"].get("constraints", [])
    if profile is not None and min_length:
        constraints = [{"text": c.text} for c in binding_constraints(profile, recut, int(min_length))]
    source = {"source": "file", "file": str(file.resolve()), "sha256": file_sha256(file),
              "data": spectrum["config"].get("data"), "split": spectrum["config"].get("split"),
              "limit": spectrum["config"].get("limit"), "images": spectrum["report"].get("n_images"),
              "resolution": prior.experts[0].resolution, "min_length": min_length,
              "min_length_rule": spectrum["config"].get("min_length_rule"), "recut": how,
              "boundaries": list(recut.boundaries), "constraints": [c["text"] for c in constraints]}
    short = [hi - lo for lo, hi in recut.intervals if hi - lo < space.min_length]
    if short:
        source["constraints"].append(f"the space's min_length {space.min_length} binds: the prior has an interval of "
                                     f"{min(short)} steps, which the space projects")
    return recut, source


def _spectrum_files(folder: Path) -> dict[str, dict[str, Any]]:
    """``config.json`` and ``prior_report.json`` of a memekit spectrum folder (empty when absent)."""
    out = {}
    for key, name in (("config", "config.json"), ("report", "prior_report.json")):
        try:
            data = json.loads((folder / name).read_text()) if (folder / name).is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            data = {}
        out[key] = data if isinstance(data, dict) and (key != "config" or data.get("command") == "spectrum") else {}
    return out


def _same_backbone(expert: ExpertSpec, base: ExpertSpec) -> bool:
    """Everything but the attention shares is the space's base expert's."""
    def rest(e: ExpertSpec) -> dict[str, Any]:
        return {k: v for k, v in e.to_dict().items() if k != "attention_share"}

    return rest(expert) == rest(base)


def _check_prior_fits(prior: MemeSpec, file: Path, space: SearchSpace) -> None:
    expert, T, schedule = space.base_expert, space.diffusion.timesteps, space.diffusion.schedule
    if prior.n_experts not in space.n_experts or (space.boundary_mode == "prior"
                                                   and prior.n_experts != space.n_experts[0]):
        raise PriorFileError(f"{file} has {prior.n_experts} experts, the space {space.name!r} {list(space.n_experts)}: "
                             f"run memekit spectrum with --n-experts {space.n_experts[0]}")
    if (prior.diffusion.timesteps, prior.diffusion.schedule) != (T, schedule):
        raise PriorFileError(f"{file} was cut for T = {prior.diffusion.timesteps} ({prior.diffusion.schedule}), "
                             "the space "
                             f"has T = {T} ({schedule}): run memekit spectrum with --schedule {schedule}")
    first = prior.experts[0]
    if (first.resolution, first.image_channels) != (expert.resolution, expert.image_channels):
        raise PriorFileError(f"{file} is for {first.image_channels} channels at {first.resolution} px, the study's "
                             f"experts see {expert.image_channels} at {expert.resolution} px: run memekit spectrum on "
                             f"the study's data at --resolution {expert.resolution}")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def study_prior(config: SearchConfig, space: SearchSpace, stored: Path | None,
                stored_source: dict[str, Any] | None) -> tuple[MemeSpec, dict[str, Any], list[str]]:
    """The study's prior, its source record and notes: the ``stored`` prior of an existing study
    (with ``stored_source``; a resumed study never changes its prior, and a ``--prior`` file that
    changed since is noted, not used), else ``config.prior`` (:func:`load_prior`), else
    :func:`recompute_prior`."""
    if stored is not None and stored.is_file():
        prior = load_spec(stored)
        source = stored_source or {"source": "stored", "file": str(stored), "boundaries": list(prior.boundaries)}
        notes = []
        if config.prior and source.get("sha256") and Path(config.prior).expanduser().is_file() \
                and file_sha256(Path(config.prior).expanduser()) != source["sha256"]:
            notes.append(f"{config.prior} changed since the study was seeded from it: the study keeps its prior "
                         f"({stored})")
        return prior, source, notes
    if config.prior:
        prior, source = load_prior(config.prior, config, space)
        return prior, source, []
    prior, source = recompute_prior(config, space)
    return prior, source, []


def prior_source_text(source: dict[str, Any] | None) -> str:
    """Which prior a study seeded and from what, in one line."""
    if not source:
        return "prior: no record of its source (the study was made before memekit recorded it)"
    cuts = source.get("boundaries")
    rule = f": {source['min_length_rule']}" if source.get("min_length_rule") else ""
    length = f"minimum interval length {source['min_length']}{rule}" if source.get("min_length") else \
        "minimum interval length not recorded"
    if source.get("source") == "file":
        images = f"{source['images']:,} images of " if source.get("images") else ""
        data = f"memekit spectrum of {images}{source['data']} at {source['resolution']} px" if source.get("data") \
            else "a spec file without a memekit spectrum folder"
        recut = f"; {source['recut']}" if source.get("recut") else ""
        return f"prior: seeded from {source['file']} ({data}, {length}); boundaries {cuts}{recut}"
    if source.get("source") == "recomputed":
        return (f"prior: recomputed from {source['images']:,} images of the {source['split']} split of "
                f"{source['data']} "
                f"at {source['resolution']} px ({length}); boundaries {cuts}. memekit search --prior "
                "DIR/prior_spec.json seeds the prior of memekit spectrum instead")
    return f"prior: the study's {source.get('file', 'prior_spec.json')}; boundaries {cuts}"


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


def warm_start_names(config: SearchConfig, space: SearchSpace) -> list[str]:
    """The warm starts a study of ``config`` enqueues on ``space`` (:func:`warm_start_specs` skips a
    preset the space cannot hold)."""
    res, channels = space.base_expert.resolution, space.base_expert.image_channels
    return [name for name in config.warm_start if name == "prior" or
            _with_n_experts(get_preset(name, res).with_image_channels(channels), space) is not None]


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
        queue_trial(study, params, {"warm_start": name, "projection_gap": gap}, skip_if_exists=True)


def warm_start_label(name: str, gap: dict[str, float] | None) -> str:
    """A warm start's name, with how far the space moved it when it could not hold it exactly:
    ``prior (projected: share gap 0.125)``; the bare name when the projection was exact."""
    if not name:
        return ""
    moved = [f"{key} gap {value:g}" for key, value in (gap or {}).items()
             if isinstance(value, int | float) and math.isfinite(value) and value > 0]
    return f"{name} (projected: {', '.join(moved)})" if moved else name


def startup_trials(sampler: str) -> int | None:
    """Trials a sampler draws at random before it models the data (None: all, the random sampler)."""
    return SAMPLER_STARTUP.get(sampler)


def draw_label(sampler: str, number: int) -> str:
    """How trial ``number``, no warm start, came about: a random draw (all of the random sampler's, and
    those of another sampler's start-up) or a proposal of the sampler (exact for one worker)."""
    startup = startup_trials(sampler)
    if startup is None:
        return "a random draw"
    return "a random draw of the sampler's start-up" if number < startup else "proposed by the sampler"


def startup_note(sampler: str, n_trials: int, n_warm: int) -> str | None:
    """What a study of ``n_trials`` (``n_warm`` of them warm starts) spends in its sampler's start-up
    phase, whose non-warm-start trials are random draws that do not depend on the data (a warning
    when the whole study is inside it); None when no trial is such a draw."""
    startup = startup_trials(sampler)
    random = max(0, n_trials - n_warm) if startup is None else max(0, min(n_trials, startup) - n_warm)
    if random == 0:
        return None
    who = ("the random sampler draws every trial" if startup is None else
           f"{sampler} draws its first {startup} trials (warm starts included) at random")
    if startup is None or n_trials <= startup:
        return (f"start-up phase: {who}, so this study of {n_trials} trials is {n_warm} warm start(s) and {random} "
                "random draws that do not depend on the data; give --trials above "
                f"{startup if startup is not None else 'the start-up'} (--update) for trials the sampler proposes")
    return (f"start-up phase: {who}, so {random} of this study's {n_trials} trials are random draws that do not "
            f"depend on the data and {n_trials - startup} are proposed by the sampler")
