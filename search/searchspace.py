"""The search space as data, and the one function that turns an Optuna trial into a MemeSpec.

A :class:`SearchSpace` is plain JSON. ``suggest_spec(trial, space, prior)`` is the only code that sees
a trial; the best trial is rebuilt with ``suggest_spec(optuna.trial.FixedTrial(params), space, prior)``.

Parameters (names as Optuna records them):

- ``n_experts``: categorical, only when ``n_experts`` lists several choices;
- boundaries, by ``boundary_mode``:
  ``uniform`` (no parameter: the paper's split), ``free`` (``boundary_u{i}`` in (0, 1], Optuna's
  Dirichlet recipe: ``x_i = -log u_i``, proportions ``x_i / sum x``, lengths
  ``min_length + proportion * (T - N min_length)``), ``prior`` (``boundary_shift{k}``: integer
  shift of the k-th interior boundary of the spectral proposal within +-``prior_radius`` T/N,
  then projected so every interval keeps ``min_length``);
- attention shares: ``share_e{e}_s{s}`` from ``share_grid`` for every expert and stage;
- widths: ``width_e{e}`` from ``width_choices`` (when given);
- soft assignment: ``p_e{e}`` in ``[p_low, p_high]`` (when ``p_fixed`` is not given);
- ``out_of_interval``: categorical when several are allowed.

**Centred on the spectral prior** (``centre = "prior"``, the ``*-prior`` presets): the whole space
narrows around the prior spec of the study instead of the prior being one warm-start trial.
Boundaries shift around the prior's (``boundary_mode = "prior"``), each share chooses among the
``share_window`` grid values on either side of the prior's share (nearest grid point) and each p_n
lies within ``p_window`` of the prior's p_n (clipped to ``[p_low, p_high]``). The ranges depend on
the prior, which is fixed per study (``STUDY_DIR/prior_spec.json``), so Optuna sees the same
distributions in every trial.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memekit.space import (
    DiffusionSpec,
    ExpertSpec,
    MemeSpec,
    get_preset,
    intervals_from_boundaries,
    uniform_intervals,
)
from memekit.space.errors import MemekitError, checked_fields
from memekit.space.spec import OUT_OF_INTERVAL

BOUNDARY_MODES = ("uniform", "free", "prior")
CENTRES = ("none", "prior")


class SearchSpaceError(MemekitError, ValueError):
    """A search-space JSON is invalid."""


@dataclass(frozen=True)
class SearchSpace:
    """What the search may change, around a base expert architecture."""

    name: str = "custom"
    base_expert: ExpertSpec = dataclasses.field(default_factory=ExpertSpec)
    diffusion: DiffusionSpec = dataclasses.field(default_factory=DiffusionSpec)
    n_experts: tuple[int, ...] = (4,)
    boundary_mode: str = "free"
    min_length: int = 50  # minimum interval length in time-steps
    prior_radius: float = 0.25  # prior mode: max shift of a boundary, as a fraction of T/N
    share_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0)
    width_choices: tuple[int, ...] | None = None
    p_low: float = 0.05
    p_high: float = 1.0
    p_fixed: tuple[float, ...] | None = None
    out_of_interval: tuple[str, ...] = ("uniform-complement",)
    centre: str = "none"  # "prior": shares and p_n searched around the spectral prior's (module docstring)
    share_window: int = 1  # centre "prior": grid steps on either side of the prior's share
    p_window: float = 0.15  # centre "prior": half-width of each p_n's range around the prior's

    def __post_init__(self) -> None:
        for name in ("n_experts", "share_grid", "width_choices", "p_fixed", "out_of_interval"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        T = self.diffusion.timesteps
        if not self.n_experts or not all(isinstance(n, int) and 1 <= n <= T for n in self.n_experts):
            raise SearchSpaceError(f"n_experts must list integers in [1, {T}], got {list(self.n_experts)}")
        if self.boundary_mode not in BOUNDARY_MODES:
            raise SearchSpaceError(f"unknown boundary_mode {self.boundary_mode!r}: choose {', '.join(BOUNDARY_MODES)}")
        if self.boundary_mode == "prior" and len(self.n_experts) > 1:
            raise SearchSpaceError("boundary_mode 'prior' needs a fixed n_experts (the prior has one N)")
        if self.centre not in CENTRES:
            raise SearchSpaceError(f"unknown centre {self.centre!r}: choose {', '.join(CENTRES)}")
        if self.centre == "prior" and (self.boundary_mode != "prior" or self.p_fixed is not None):
            raise SearchSpaceError("centre 'prior' needs boundary_mode 'prior' and searched p_n (no p_fixed)")
        if not isinstance(self.share_window, int) or self.share_window < 0 or not 0 < self.p_window <= 1:
            raise SearchSpaceError(f"need share_window >= 0 (grid steps) and p_window in (0, 1], got "
                                   f"{self.share_window!r} and {self.p_window!r}")
        if not isinstance(self.min_length, int) or self.min_length < 1 or self.min_length * max(self.n_experts) > T:
            raise SearchSpaceError(f"min_length {self.min_length!r} must be >= 1 and fit {max(self.n_experts)} "
                                   f"intervals into T = {T}")
        if not self.share_grid or not all(isinstance(s, int | float) and 0 <= s <= 1 for s in self.share_grid):
            raise SearchSpaceError(f"share_grid must list numbers in [0, 1], got {list(self.share_grid)}")
        if not 0 < self.p_low <= self.p_high <= 1:
            raise SearchSpaceError(f"need 0 < p_low <= p_high <= 1, got {self.p_low}, {self.p_high}")
        if self.p_fixed is not None and (len(self.n_experts) > 1 or len(self.p_fixed) != self.n_experts[0]):
            raise SearchSpaceError("p_fixed needs a fixed n_experts and one p per expert")
        bad = [o for o in self.out_of_interval if o not in OUT_OF_INTERVAL]
        if not self.out_of_interval or bad:
            raise SearchSpaceError(f"out_of_interval must list values of {', '.join(OUT_OF_INTERVAL)}, got "
                                   f"{list(self.out_of_interval)}")
        for width in self.width_choices or (self.base_expert.base_width,):
            dataclasses.replace(self.base_expert, base_width=width)  # raises SpecError if invalid

    # ---- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["base_expert"] = self.base_expert.to_dict()
        data["diffusion"] = self.diffusion.to_dict()
        return json.loads(json.dumps(data))  # tuples -> lists

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        checked_fields(cls, data, "a search space", "search-space field", SearchSpaceError,
                       extra=frozenset({"base_preset", "resolution"}))
        kwargs = dict(data)
        base_preset, resolution = kwargs.pop("base_preset", None), kwargs.pop("resolution", None)
        if base_preset is not None:
            preset = get_preset(base_preset, resolution or 32)
            kwargs.setdefault("base_expert", preset.experts[0].to_dict())
            kwargs.setdefault("diffusion", preset.diffusion.to_dict())
        if isinstance(kwargs.get("base_expert"), dict):
            expert = ExpertSpec.from_dict(kwargs["base_expert"])
            kwargs["base_expert"] = expert.with_resolution(resolution) if resolution else expert
        if isinstance(kwargs.get("diffusion"), dict):
            kwargs["diffusion"] = DiffusionSpec.from_dict(kwargs["diffusion"])
        if isinstance(kwargs.get("n_experts"), int):
            kwargs["n_experts"] = (kwargs["n_experts"],)
        if isinstance(kwargs.get("out_of_interval"), str):
            kwargs["out_of_interval"] = (kwargs["out_of_interval"],)
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise SearchSpaceError(f"bad search space: {err}") from None


def _tiny_expert(resolution: int) -> ExpertSpec:
    return ExpertSpec(resolution=resolution, base_width=16, channel_mult=(1, 2), blocks_per_stage=(1, 1),
                      attention_share=(0.0, 1.0), head_dim=8, attention_pool=(2, 1))


def _cpu32_expert(head_dim: int = 8) -> ExpertSpec:
    return ExpertSpec(resolution=32, base_width=16, channel_mult=(1, 2, 2), blocks_per_stage=(1, 1, 1),
                      attention_share=(0.0, 1.0, 1.0), head_dim=head_dim, attention_pool=(2, 1, 1))


SPACE_PRESETS: dict[str, dict[str, Any]] = {
    # MEME's setting: 4 experts, free boundaries, per-expert per-stage shares, searched p_n
    "meme": {"base_preset": "meme-paper", "n_experts": [4], "boundary_mode": "free"},
    # shares only: the paper's uniform intervals and p_n, search the conv/attention balance
    "shares": {"base_preset": "meme-paper", "n_experts": [4], "boundary_mode": "uniform",
               "p_fixed": [0.8, 0.4, 0.2, 0.1]},
    # around the spectral prior's boundaries
    "prior": {"base_preset": "meme-paper", "n_experts": [4], "boundary_mode": "prior"},
    # a real study on 2 CPU cores: 4 small 3-stage experts at 32 px, free boundaries
    "cpu32": {"base_expert": _cpu32_expert().to_dict(), "n_experts": [4], "boundary_mode": "free",
              "min_length": 50, "share_grid": [0.0, 0.25, 0.5, 0.75, 1.0]},
    # the same, centred on the spectral prior (boundaries, shares and p_n around the prior's)
    "cpu32-prior": {"base_expert": _cpu32_expert().to_dict(), "n_experts": [4], "boundary_mode": "prior",
                    "min_length": 50, "share_grid": [0.0, 0.25, 0.5, 0.75, 1.0], "centre": "prior"},
    "meme-prior": {"base_preset": "meme-paper", "n_experts": [4], "boundary_mode": "prior", "centre": "prior"},
    # the CPU evidence backbone: cpu32 with 4-channel heads (shares on a 1/4 grid at every stage), the
    # backbone of memekit.space.presets.backbone_presets' CPU table (single-large = width 28, ~2.8x MACs)
    "cpu32b": {"base_expert": _cpu32_expert(4).to_dict(), "n_experts": [4], "boundary_mode": "free",
               "min_length": 50, "share_grid": [0.0, 0.25, 0.5, 0.75, 1.0]},
    "cpu32b-prior": {"base_expert": _cpu32_expert(4).to_dict(), "n_experts": [4], "boundary_mode": "prior",
                     "min_length": 50, "share_grid": [0.0, 0.25, 0.5, 0.75, 1.0], "centre": "prior"},
    # CPU-sized: 2 tiny experts of 2 stages, for tests, the quickstart and notebooks
    "tiny": {"base_expert": _tiny_expert(16).to_dict(), "n_experts": [2], "boundary_mode": "free",
             "min_length": 100, "share_grid": [0.0, 0.5, 1.0], "p_low": 0.3, "p_high": 1.0},
}


def load_search_space(name_or_path: str, resolution: int | None = None, channels: int | None = None) -> SearchSpace:
    """A named search space (``SPACE_PRESETS``) or a JSON file, optionally at ``resolution`` and with
    experts that see ``channels`` input channels (latents)."""
    if name_or_path in SPACE_PRESETS:
        data = dict(SPACE_PRESETS[name_or_path], name=name_or_path)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise SearchSpaceError(f"search space {name_or_path!r} is neither a preset "
                                   f"({', '.join(SPACE_PRESETS)}) nor a JSON file")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SearchSpaceError(f"{path.name} is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise SearchSpaceError(f"{path.name} must hold a JSON object")
    if resolution is not None:
        data["resolution"] = resolution
    space = SearchSpace.from_dict(data)
    if channels is None or channels == space.base_expert.image_channels:
        return space
    return dataclasses.replace(space, base_expert=dataclasses.replace(space.base_expert, image_channels=channels))


# ---- trial -> spec -----------------------------------------------------------------------------
def _lengths_from_proportions(proportions: list[float], total: int, min_length: int) -> list[int]:
    """Integer interval lengths >= min_length that sum to ``total`` (largest-remainder rounding)."""
    free = total - min_length * len(proportions)
    raw = [p * free for p in proportions]
    base = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - base[i], reverse=True)
    for i in order[: free - sum(base)]:
        base[i] += 1
    return [min_length + b for b in base]


def _boundaries(trial: Any, space: SearchSpace, n: int, prior: MemeSpec | None) -> list[int]:
    T = space.diffusion.timesteps
    if space.boundary_mode == "uniform" or n == 1:
        return [iv[0] for iv in uniform_intervals(T, n)] + [T]
    if space.boundary_mode == "free":
        x = [-math.log(trial.suggest_float(f"boundary_u{i}", 1e-6, 1.0)) for i in range(n)]
        proportions = [v / sum(x) for v in x] if sum(x) > 0 else [1.0 / n] * n
        lengths = _lengths_from_proportions(proportions, T, space.min_length)
        return [sum(lengths[:k]) for k in range(n + 1)]
    if prior is None or prior.n_experts != n:
        raise SearchSpaceError("boundary_mode 'prior' needs a spectral prior spec with the same n_experts")
    radius = max(1, int(space.prior_radius * T / n))
    cuts = [b + trial.suggest_int(f"boundary_shift{k}", -radius, radius)
            for k, b in enumerate(prior.boundaries[1:-1], start=1)]
    return [0] + project_cuts(cuts, T, space.min_length) + [T]


def _centred(space: SearchSpace, prior: MemeSpec | None) -> MemeSpec | None:
    if space.centre != "prior":
        return None
    if prior is None:
        raise SearchSpaceError("a space centred on the prior needs the study's spectral prior spec")
    return prior


def share_choices(space: SearchSpace, prior: MemeSpec | None, expert: int, stage: int) -> list[float]:
    """The share grid, or (centred on the prior) its ``share_window`` values on either side of the
    grid point nearest to the prior's share of this expert and stage."""
    grid = list(space.share_grid)
    centre = _centred(space, prior)
    if centre is None:
        return grid
    value = centre.experts[expert].attention_share[stage]
    i = min(range(len(grid)), key=lambda k: abs(grid[k] - value))
    return grid[max(0, i - space.share_window):i + space.share_window + 1]


def p_range(space: SearchSpace, prior: MemeSpec | None, expert: int) -> tuple[float, float]:
    """``[p_low, p_high]``, or (centred on the prior) the prior's p_n +- ``p_window`` within it."""
    centre = _centred(space, prior)
    if centre is None:
        return space.p_low, space.p_high
    p = centre.soft_assignment[expert]
    low, high = max(space.p_low, p - space.p_window), min(space.p_high, p + space.p_window)
    return (low, high) if low < high else (space.p_low, space.p_high)


def project_cuts(cuts: list[int], total: int, min_length: int) -> list[int]:
    """Move interior cut points the least so that every interval is >= ``min_length`` long."""
    n = len(cuts) + 1
    out = []
    for k, c in enumerate(cuts, start=1):
        low = (out[-1] if out else 0) + min_length
        high = total - (n - k) * min_length
        out.append(min(max(c, low), high))
    return out


def suggest_spec(trial: Any, space: SearchSpace, prior: MemeSpec | None = None) -> MemeSpec:
    """Draw a MemeSpec from ``space`` with ``trial`` (an Optuna Trial or FixedTrial)."""
    n = (space.n_experts[0] if len(space.n_experts) == 1
         else trial.suggest_categorical("n_experts", list(space.n_experts)))
    boundaries = _boundaries(trial, space, n, prior)
    base = space.base_expert
    experts = []
    for e in range(n):
        shares = tuple(float(trial.suggest_categorical(f"share_e{e}_s{s}", share_choices(space, prior, e, s)))
                       for s in range(base.n_stages))
        width = base.base_width
        if space.width_choices:
            width = int(trial.suggest_categorical(f"width_e{e}", list(space.width_choices)))
        experts.append(dataclasses.replace(base, attention_share=shares, base_width=width))
    if space.p_fixed is not None:
        p = tuple(space.p_fixed)
    elif n == 1:
        p = (1.0,)
    else:
        p = tuple(trial.suggest_float(f"p_e{e}", *p_range(space, prior, e)) for e in range(n))
    ooi = space.out_of_interval[0]
    if len(space.out_of_interval) > 1:
        ooi = trial.suggest_categorical("out_of_interval", list(space.out_of_interval))
    if n == 1:
        ooi = "uniform-all"
    return MemeSpec(experts=tuple(experts), intervals=intervals_from_boundaries(boundaries),
                    soft_assignment=p, diffusion=space.diffusion, out_of_interval=ooi,
                    name=f"{space.name}-candidate")


# ---- spec -> params (warm start) ----------------------------------------------------------------
def params_for(spec: MemeSpec, space: SearchSpace, prior: MemeSpec | None = None) -> dict[str, Any]:
    """Parameters of ``space`` that reproduce ``spec`` as closely as the space allows.

    Values outside the space are projected (nearest share / width choice, p clipped, boundary
    shifts clipped to the prior radius); compare ``suggest_spec(FixedTrial(params))`` with ``spec`` to
    see whether the projection was exact.
    """
    n = spec.n_experts
    if n not in space.n_experts:
        raise SearchSpaceError(f"{spec.name or 'spec'} has {n} experts; the space allows {list(space.n_experts)}")
    params: dict[str, Any] = {}
    if len(space.n_experts) > 1:
        params["n_experts"] = n
    T = space.diffusion.timesteps
    lengths = [hi - lo for lo, hi in spec.intervals]
    if space.boundary_mode == "free" and n > 1:
        free = T - n * space.min_length
        for i, length in enumerate(lengths):
            params[f"boundary_u{i}"] = math.exp(-max(length - space.min_length, 0) / free)
    elif space.boundary_mode == "prior" and n > 1 and prior is not None:
        radius = max(1, int(space.prior_radius * T / n))
        for k, (b, b0) in enumerate(zip(spec.boundaries[1:-1], prior.boundaries[1:-1], strict=True), start=1):
            params[f"boundary_shift{k}"] = max(-radius, min(radius, b - b0))
    for e, expert in enumerate(spec.experts):
        for s, share in enumerate(expert.attention_share[: space.base_expert.n_stages]):
            params[f"share_e{e}_s{s}"] = min(share_choices(space, prior, e, s), key=lambda g, v=share: abs(g - v))
        if space.width_choices:
            params[f"width_e{e}"] = min(space.width_choices, key=lambda w, v=expert.base_width: abs(w - v))
    if space.p_fixed is None and n > 1:
        for e, p in enumerate(spec.soft_assignment):
            low, high = p_range(space, prior, e)
            params[f"p_e{e}"] = min(max(p, low), high)
    if len(space.out_of_interval) > 1 and n > 1:
        params["out_of_interval"] = (spec.out_of_interval if spec.out_of_interval in space.out_of_interval
                                     else space.out_of_interval[0])
    return params


def projection_gap(spec: MemeSpec, projected: MemeSpec) -> dict[str, float]:
    """How far a projected spec lies from the original (0 everywhere = exact)."""
    share_gap = max(abs(a - b) for e, f in zip(spec.experts, projected.experts, strict=False)
                    for a, b in zip(e.attention_share, f.attention_share, strict=False))
    boundary_gap = max(abs(a - b) for a, b in zip(spec.boundaries, projected.boundaries, strict=False))
    p_gap = max(abs(a - b) for a, b in zip(spec.soft_assignment, projected.soft_assignment, strict=False))
    return {"share": share_gap, "boundary": float(boundary_gap), "p": p_gap}


# ---- readable parameter names (plots, reports) --------------------------------------------------
_LABELS = (
    (re.compile(r"^boundary_u(\d+)$"), "length of interval {0} (Dirichlet u)"),
    (re.compile(r"^boundary_shift(\d+)$"), "shift of boundary {0}"),
    (re.compile(r"^share_e(\d+)_s(\d+)$"), "attention share, expert {0} stage {1}"),
    (re.compile(r"^width_e(\d+)$"), "width of expert {0}"),
    (re.compile(r"^p_e(\d+)$"), "p_n of expert {0} (own-interval probability)"),
    (re.compile(r"^n_experts$"), "number of experts"),
    (re.compile(r"^out_of_interval$"), "out-of-interval rule"),
)


def param_label(name: str) -> str:
    """What a parameter of :func:`suggest_spec` means, in words (``share_e1_s2`` -> ``attention
    share, expert 1 stage 2``); unknown names are returned as they are."""
    for pattern, label in _LABELS:
        match = pattern.match(name)
        if match:
            return label.format(*match.groups())
    return name
