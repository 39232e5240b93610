"""Named MemeSpecs, one table at 32 and 64 px.

Sizing follows the paper's LDM-L / LDM-S ratio: a small expert (base width 32) costs about a
third of ``single-large`` (base width 56) per step, so 4 small experts sample ~3x cheaper.

| preset | experts | architecture | intervals | p_n |
|---|---|---|---|---|
| ``single-large`` | 1 | width 56, LDM-like (conv stage 0, attention deeper) | [0, T) | 1 |
| ``single-small`` | 1 | width 32, LDM-like | [0, T) | 1 |
| ``multi-same`` | 4 | width 32, LDM-like, all identical | uniform | 0.8, 0.4, 0.2, 0.1 |
| ``meme-paper`` | 4 | width 32, inception mixers, share rising with depth and noise | uniform | 0.8, 0.4, 0.2, 0.1 |

"LDM-like" mixers have ``attention_share = (0, 1, 1, 1)``: a conv-only top level and pure
self-attention below it, the plain U-Net baseline of the paper (attention at latent 32/16/8).
``meme-paper``'s shares follow MEME's two rules and its reported end-expert ratios (stage-2
conv:attention 5:8 for the cleanest expert vs 1:4 for the noisiest; deepest stage 1:3 vs 1:15),
rounded to the head grid. Experts are listed from the lowest noise (small t) to the highest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .assignment import PAPER_SOFT_ASSIGNMENT
from .errors import SpecError
from .spec import DiffusionSpec, ExpertSpec, MemeSpec, load_spec, uniform_intervals

RESOLUTIONS = (32, 64)
# the preset whose backbone and diffusion a spectral prior reuses by default (spectrum --base)
DEFAULT_BASE = "meme-paper"
LDM_LIKE_SHARE = (0.0, 1.0, 1.0, 1.0)
# per expert, lowest noise first; per stage, shallow to deep
MEME_PAPER_SHARES = (
    (0.25, 0.625, 0.75, 0.75),
    (0.25, 0.625, 0.75, 0.875),
    (0.5, 0.75, 0.875, 0.875),
    (0.5, 0.75, 0.875, 1.0),
)


def _expert(resolution: int, base_width: int, share: tuple[float, ...]) -> ExpertSpec:
    pool = (2, 1, 1, 1) if resolution <= 32 else (4, 2, 1, 1)
    return ExpertSpec(image_channels=3, resolution=resolution, base_width=base_width, channel_mult=(1, 2, 2, 2),
                      blocks_per_stage=(2, 2, 2, 2), attention_share=share, head_dim=8, attention_pool=pool)


def _single(name: str, resolution: int, width: int) -> MemeSpec:
    diffusion = DiffusionSpec()
    return MemeSpec(experts=(_expert(resolution, width, LDM_LIKE_SHARE),),
                    intervals=uniform_intervals(diffusion.timesteps, 1), soft_assignment=(1.0,),
                    diffusion=diffusion, out_of_interval="uniform-all", name=name)


def _multi(name: str, resolution: int, shares: tuple[tuple[float, ...], ...]) -> MemeSpec:
    diffusion = DiffusionSpec()
    return MemeSpec(experts=tuple(_expert(resolution, 32, s) for s in shares),
                    intervals=uniform_intervals(diffusion.timesteps, len(shares)),
                    soft_assignment=PAPER_SOFT_ASSIGNMENT, diffusion=diffusion,
                    out_of_interval="uniform-complement", name=name)


PRESETS: dict[str, dict[int, MemeSpec]] = {
    "single-large": {r: _single("single-large", r, 56) for r in RESOLUTIONS},
    "single-small": {r: _single("single-small", r, 32) for r in RESOLUTIONS},
    "multi-same":   {r: _multi("multi-same", r, (LDM_LIKE_SHARE,) * 4) for r in RESOLUTIONS},
    "meme-paper":   {r: _multi("meme-paper", r, MEME_PAPER_SHARES) for r in RESOLUTIONS},
}


LARGE_WIDTH_RATIO = 1.75  # single-large / single-small base width: 56 / 32, about 3x the MACs per step


def resample_shares(shares: tuple[float, ...], n_stages: int) -> tuple[float, ...]:
    """Per-stage shares resampled to ``n_stages`` stages (first and last kept, evenly in between)."""
    if len(shares) == n_stages:
        return tuple(shares)
    idx = [round(i * (len(shares) - 1) / max(n_stages - 1, 1)) for i in range(n_stages)]
    return tuple(shares[i] for i in idx)


def backbone_presets(expert: ExpertSpec, diffusion: DiffusionSpec | None = None) -> dict[str, MemeSpec]:
    """The four presets rebuilt on one backbone (``expert``'s resolution, stages, blocks, head grid and
    pools), so that cost differences between them come from the design choices alone: small experts
    and ``single-small`` at ``expert``'s width, ``single-large`` at ``LARGE_WIDTH_RATIO`` times it
    (rounded to the head grid), LDM-like shares ``(0, 1, ..., 1)`` and the paper's shares resampled
    to the stage count (:func:`resample_shares`)."""
    diffusion = diffusion or DiffusionSpec()
    n = expert.n_stages
    ldm = (0.0,) + (1.0,) * (n - 1)
    grid = expert.head_dim * max(expert.channel_mult)
    large_width = max(expert.head_dim, round(expert.base_width * LARGE_WIDTH_RATIO / expert.head_dim) * expert.head_dim)
    if any(large_width * m % expert.head_dim for m in expert.channel_mult):  # keep every stage on the head grid
        large_width = round(expert.base_width * LARGE_WIDTH_RATIO / grid) * grid

    def one(name: str, width: int, share: tuple[float, ...]) -> MemeSpec:
        e = dataclasses.replace(expert, base_width=width, attention_share=share)
        return MemeSpec(experts=(e,), intervals=uniform_intervals(diffusion.timesteps, 1), soft_assignment=(1.0,),
                        diffusion=diffusion, out_of_interval="uniform-all", name=name)

    def four(name: str, shares: tuple[tuple[float, ...], ...]) -> MemeSpec:
        experts = tuple(dataclasses.replace(expert, attention_share=resample_shares(s, n)) for s in shares)
        return MemeSpec(experts=experts, intervals=uniform_intervals(diffusion.timesteps, 4),
                        soft_assignment=PAPER_SOFT_ASSIGNMENT, diffusion=diffusion,
                        out_of_interval="uniform-complement", name=name)

    return {"single-large": one("single-large", large_width, ldm),
            "single-small": one("single-small", expert.base_width, ldm),
            "multi-same": four("multi-same", (ldm,) * 4),
            "meme-paper": four("meme-paper", MEME_PAPER_SHARES)}


def get_preset(name: str, resolution: int = 32) -> MemeSpec:
    """The preset ``name`` at ``resolution`` (32 or 64 exactly; other multiples of 8 are rebuilt)."""
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)} (or give a spec JSON)")
    table = PRESETS[name]
    if resolution in table:
        return table[resolution]
    return table[64 if resolution > 32 else 32].with_resolution(resolution)


def resolve_spec(name_or_path: str, resolution: int | None = None) -> MemeSpec:
    """A preset name or a spec JSON path -> MemeSpec (optionally re-targeted to ``resolution``)."""
    if name_or_path in PRESETS:
        return get_preset(name_or_path, resolution or 32)
    if not Path(name_or_path).exists() and not name_or_path.endswith(".json"):
        raise SpecError(
            f"{name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a spec JSON file"
        )
    spec = load_spec(name_or_path)
    return spec.with_resolution(resolution) if resolution else spec
