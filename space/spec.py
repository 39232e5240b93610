"""Frozen, JSON-serialisable specs of the MEME design space.

An :class:`ExpertSpec` describes one expert U-Net: its stages, widths and, per stage, the
``attention_share`` of its inception token mixers (the fraction of the mixer's channels that go
to self-attention; 0 is a pure convolution mixer, 1 a pure attention mixer). A
:class:`MemeSpec` describes a whole multi-expert diffusion model: the diffusion process, the
time-step intervals, one expert per interval and the soft interval assignment used in training.

Time-steps are 0-indexed, ``t in {0, ..., T-1}``, as in DDPM/diffusers code. Expert ``n`` owns the
half-open interval ``[start_n, end_n)``; the intervals cover ``[0, T)`` exactly once and are listed
from the lowest noise (small t) to the highest. The paper's uniform split
``(n-1)T/N < t <= nT/N`` over 1-indexed t is the same partition.

Attention channels of a stage are ``head_dim * floor(share * width / head_dim + 1/2)``: the share
is realised in whole heads (see :meth:`ExpertSpec.attention_channels`).

Reading JSON (``from_dict``, :func:`load_spec`) refuses a spec that lacks a field memekit has always
written (every expert field; the diffusion's ``timesteps``, ``schedule`` and ``prediction``; the
spec's ``diffusion`` and ``out_of_interval``): a deleted ``base_width`` is an error, not a silent
default. Fields added later (the diffusion's preconditioning and its statistics) stay optional, so
every spec memekit wrote loads unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError, checked_fields
from .files import atomic_write_text
from .rings import ring_count

SPEC_FORMAT_VERSION = 1
SCHEDULES = ("linear-ldm", "linear-ddpm", "cosine")
PREDICTIONS = ("eps", "v")
OUT_OF_INTERVAL = ("uniform-all", "uniform-complement")
# how a network output becomes the prediction (memekit.space.precondition, DiffusionSpec.preconditioning)
PRECONDITIONINGS = ("none", "edm", "wiener", "colour")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class ExpertSpec:
    """One expert U-Net. Per-stage tuples all have ``len(channel_mult)`` entries."""

    image_channels: int = 3
    resolution: int = 32
    base_width: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)
    # fraction of each stage's mixer channels given to self-attention (0 = conv, 1 = attention)
    attention_share: tuple[float, ...] = (0.0, 0.5, 0.75, 1.0)
    head_dim: int = 8
    # average-pool factor applied before attention, per stage (1 = attend at full resolution)
    attention_pool: tuple[int, ...] = (2, 1, 1, 1)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("channel_mult", "blocks_per_stage", "attention_share", "attention_pool"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    # ---- derived quantities -------------------------------------------------------------
    @property
    def n_stages(self) -> int:
        return len(self.channel_mult)

    def stage_width(self, stage: int) -> int:
        return self.base_width * self.channel_mult[stage]

    def stage_resolution(self, stage: int) -> int:
        return self.resolution // 2**stage

    def attention_channels(self, stage: int) -> int:
        """Channels routed to self-attention in ``stage``: whole heads nearest to share*width."""
        width = self.stage_width(stage)
        heads = math.floor(self.attention_share[stage] * width / self.head_dim + 0.5)
        return heads * self.head_dim

    def effective_attention_share(self) -> tuple[float, ...]:
        """The attention share actually built per stage (after rounding to whole heads)."""
        return tuple(self.attention_channels(s) / self.stage_width(s) for s in range(self.n_stages))

    # ---- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`SpecError` with a one-line message on the first problem found."""
        for name in ("image_channels", "resolution", "base_width", "head_dim"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SpecError(f"expert {name} must be a positive integer, got {value!r}")
        if not isinstance(self.channel_mult, tuple):
            raise SpecError(f"channel_mult must be a list of positive integers, got {self.channel_mult!r}")
        n = len(self.channel_mult)
        if n == 0 or not all(_is_int(m) and m >= 1 for m in self.channel_mult):
            raise SpecError(
                f"channel_mult must be a non-empty list of positive integers, got {list(self.channel_mult)}"
            )
        for name in ("blocks_per_stage", "attention_share", "attention_pool"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != n:
                raise SpecError(
                    f"{name} must have one entry per stage ({n}, like channel_mult), got {value!r}"
                )
        if not all(_is_int(b) and b >= 1 for b in self.blocks_per_stage):
            raise SpecError(f"blocks_per_stage entries must be integers >= 1, got {list(self.blocks_per_stage)}")
        for s, share in enumerate(self.attention_share):
            if not _is_number(share) or not 0.0 <= share <= 1.0:
                raise SpecError(f"attention_share of stage {s} must lie in [0, 1], got {share!r}")
        if not all(_is_int(p) and p >= 1 for p in self.attention_pool):
            raise SpecError(f"attention_pool entries must be integers >= 1, got {list(self.attention_pool)}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        factor = 2 ** (n - 1)
        if self.resolution % factor:
            raise SpecError(
                f"resolution {self.resolution} is not divisible by 2^(stages-1) = {factor}: "
                f"use a multiple of {factor} or fewer stages"
            )
        for s in range(n):
            width = self.stage_width(s)
            if width % self.head_dim:
                raise SpecError(
                    f"stage {s} width {width} (base_width {self.base_width} x {self.channel_mult[s]}) is not "
                    f"divisible by head_dim {self.head_dim}: pick widths that are multiples of head_dim"
                )
            res, pool = self.stage_resolution(s), self.attention_pool[s]
            if self.attention_channels(s) and res % pool:
                raise SpecError(
                    f"stage {s} resolution {res} is not divisible by its attention_pool {pool}: use a pool "
                    "factor that divides the stage's resolution"
                )

    def with_resolution(self, resolution: int) -> ExpertSpec:
        """The same expert at another image size (re-validated)."""
        return dataclasses.replace(self, resolution=resolution)

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExpertSpec:
        """The inverse of :meth:`to_dict`; every field is required (one-line :class:`SpecError`)."""
        kwargs = _checked_kwargs(cls, data, "expert")
        _require(kwargs, EXPERT_REQUIRED, "expert")
        return cls(**kwargs)


@dataclass(frozen=True)
class DiffusionSpec:
    """The forward process: ``timesteps`` T, the beta schedule, what the network predicts and how its
    output becomes the prediction (``preconditioning``, see :mod:`memekit.space.precondition`).

    ``data_std`` (``sqrt(E[x_0^2])`` per pixel, images in [-1, 1]) is needed by ``edm`` and
    ``wiener``; ``data_spectrum`` (per channel, the data's power ``E|X_0(k)|^2`` per integer-radius
    ring of the orthonormal FFT, rings ``0..ring_count(R) - 1``) by ``wiener``; ``colour`` needs
    ``data_mean`` (the mean image, ``C x R x R``) and ``data_cross_spectrum`` (per ring, the ``C x C``
    cross-power ``Re E[Z(k) Z(k)^H]`` of the mean-removed data ``z = x_0 - mean``). All are measured
    from the training data (``memekit.analysis.linear.preconditioned``) and stored so a spec is
    self-contained. Specs without these fields (``none``) serialise exactly as before.
    """

    timesteps: int = 1000
    schedule: str = "linear-ldm"
    prediction: str = "eps"
    preconditioning: str = "none"
    data_std: float | None = None
    data_spectrum: tuple[tuple[float, ...], ...] | None = None
    data_mean: tuple[tuple[tuple[float, ...], ...], ...] | None = None  # (C, R, R), colour only
    data_cross_spectrum: tuple[tuple[tuple[float, ...], ...], ...] | None = None  # (rings, C, C), colour only

    def __post_init__(self) -> None:
        for name in ("data_mean", "data_cross_spectrum"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                try:
                    object.__setattr__(self, name, tuple(tuple(tuple(row) for row in m) for m in value))
                except TypeError:
                    raise SpecError(f"diffusion {name} must be a nested list of numbers (3 levels)") from None
        if isinstance(self.data_spectrum, list | tuple):
            try:
                object.__setattr__(self, "data_spectrum", tuple(tuple(row) for row in self.data_spectrum))
            except TypeError:
                raise SpecError("diffusion data_spectrum must be a list of per-channel lists of numbers") from None
        if not _is_int(self.timesteps) or self.timesteps < 2:
            raise SpecError(f"diffusion timesteps must be an integer >= 2, got {self.timesteps!r}")
        if self.schedule not in SCHEDULES:
            raise SpecError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.prediction not in PREDICTIONS:
            raise SpecError(f"unknown prediction {self.prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        self._validate_preconditioning()

    def _validate_preconditioning(self) -> None:
        mode = self.preconditioning
        if mode not in PRECONDITIONINGS:
            raise SpecError(f"unknown preconditioning {mode!r}: choose one of {', '.join(PRECONDITIONINGS)}")
        colour = (self.data_mean, self.data_cross_spectrum)
        if mode != "colour" and any(v is not None for v in colour):
            raise SpecError("data_mean and data_cross_spectrum are used only by preconditioning 'colour': drop "
                            "them or set the preconditioning")
        if mode == "none":
            if self.data_std is not None or self.data_spectrum is not None:
                raise SpecError("data_std and data_spectrum are used only by preconditioning edm, wiener or "
                                "colour: drop them or set the preconditioning")
            return
        if not (_is_number(self.data_std) and self.data_std > 0):
            raise SpecError(f"preconditioning {mode!r} needs data_std > 0 (measured from the training data), "
                            f"got {self.data_std!r}")
        if mode in ("edm", "colour"):
            if self.data_spectrum is not None:
                raise SpecError(f"data_spectrum is used only by preconditioning 'wiener': drop it for {mode!r}")
            if mode == "colour":
                self._validate_colour()
            return
        rows = self.data_spectrum
        if (not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) < 2
                or not all(_is_number(v) and v > 0 for r in rows for v in r)):
            raise SpecError("preconditioning 'wiener' needs data_spectrum: one list of positive ring powers "
                            "per channel, all of the same length (measured from the training data)")

    def _validate_colour(self) -> None:
        mean, cross = self.data_mean, self.data_cross_spectrum
        ok_mean = (mean and len({len(c) for c in mean}) == 1 and all(len(r) == len(mean[0]) for c in mean for r in c)
                   and all(_is_number(v) for c in mean for r in c for v in r))
        channels = len(mean) if mean else 0
        ok_cross = (cross and len(cross) >= 2 and all(len(m) == channels and all(len(r) == channels for r in m)
                                                      for m in cross)
                    and all(_is_number(v) for m in cross for r in m for v in r)
                    and all(m[i][i] > 0 for m in cross for i in range(channels)))
        if not (ok_mean and ok_cross):
            raise SpecError("preconditioning 'colour' needs data_mean (C x R x R numbers) and data_cross_spectrum "
                            "(one C x C matrix with positive diagonal per ring), measured from the training data")

    def to_dict(self) -> dict[str, Any]:
        data = {"timesteps": self.timesteps, "schedule": self.schedule, "prediction": self.prediction}
        if self.preconditioning != "none":
            data["preconditioning"] = self.preconditioning
            data["data_std"] = self.data_std
            if self.data_spectrum is not None:
                data["data_spectrum"] = [list(row) for row in self.data_spectrum]
            for name in ("data_mean", "data_cross_spectrum"):
                if getattr(self, name) is not None:
                    data[name] = [[list(row) for row in m] for m in getattr(self, name)]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionSpec:
        """The inverse of :meth:`to_dict`; :data:`DIFFUSION_REQUIRED` must be given (preconditioning
        and its statistics default to none)."""
        kwargs = _checked_kwargs(cls, data, "diffusion")
        _require(kwargs, DIFFUSION_REQUIRED, "diffusion")
        return cls(**kwargs)


@dataclass(frozen=True)
class MemeSpec:
    """A multi-expert diffusion model: one expert per time-step interval.

    ``soft_assignment[n]`` is p_n: in training, expert n draws t from its own interval with
    probability p_n and otherwise from ``out_of_interval`` (``uniform-all``: uniform over all
    of [0, T); ``uniform-complement``: uniform over [0, T) minus its own interval).
    """

    experts: tuple[ExpertSpec, ...]
    intervals: tuple[tuple[int, int], ...]
    soft_assignment: tuple[float, ...]
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    out_of_interval: str = "uniform-complement"
    name: str = ""
    format_version: int = SPEC_FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", tuple(self.experts))
        object.__setattr__(self, "intervals", tuple(tuple(iv) for iv in self.intervals))
        object.__setattr__(self, "soft_assignment", tuple(self.soft_assignment))
        self.validate()

    @property
    def n_experts(self) -> int:
        return len(self.experts)

    @property
    def boundaries(self) -> tuple[int, ...]:
        """``(0, b_1, ..., b_{N-1}, T)``: interval n is ``[boundaries[n], boundaries[n+1])``."""
        return tuple(iv[0] for iv in self.intervals) + (self.intervals[-1][1],)

    def expert_for(self, t: int) -> int:
        """Index of the expert that owns time-step ``t``."""
        for n, (lo, hi) in enumerate(self.intervals):
            if lo <= t < hi:
                return n
        raise SpecError(f"time-step {t} is outside [0, {self.diffusion.timesteps})")

    def validate(self) -> None:
        if self.format_version != SPEC_FORMAT_VERSION:
            raise SpecError(
                f"spec format_version {self.format_version!r} is not supported (this memekit reads "
                f"version {SPEC_FORMAT_VERSION})"
            )
        if not isinstance(self.diffusion, DiffusionSpec):
            raise SpecError("diffusion must be a DiffusionSpec")
        n = len(self.experts)
        if n == 0:
            raise SpecError("a MemeSpec needs at least one expert")
        if not all(isinstance(e, ExpertSpec) for e in self.experts):
            raise SpecError("experts must be ExpertSpec objects")
        if len(self.intervals) != n:
            raise SpecError(
                f"{n} experts but {len(self.intervals)} intervals: give exactly one interval per expert"
            )
        if len(self.soft_assignment) != n:
            raise SpecError(
                f"{n} experts but {len(self.soft_assignment)} soft_assignment probabilities: give one p per expert"
            )
        self._validate_intervals()
        for i, p in enumerate(self.soft_assignment):
            if not _is_number(p) or not 0.0 < p <= 1.0:
                raise SpecError(f"soft_assignment p_{i} must lie in (0, 1], got {p!r}")
        if self.out_of_interval not in OUT_OF_INTERVAL:
            raise SpecError(
                f"unknown out_of_interval {self.out_of_interval!r}: choose one of {', '.join(OUT_OF_INTERVAL)}"
            )
        if n == 1 and self.out_of_interval == "uniform-complement" and self.soft_assignment[0] < 1.0:
            raise SpecError("a single expert has no complement interval: set p_0 = 1 or use uniform-all")
        first = self.experts[0]
        spectrum = self.diffusion.data_spectrum
        if spectrum is not None and (len(spectrum) != first.image_channels
                                     or len(spectrum[0]) != ring_count(first.resolution)):
            raise SpecError(
                f"the diffusion data_spectrum has {len(spectrum)} channel(s) x {len(spectrum[0])} rings but the "
                f"experts see {first.image_channels} channel(s) at {first.resolution} px "
                f"({ring_count(first.resolution)} rings): measure the spectrum at the experts' resolution"
            )
        mean = self.diffusion.data_mean
        if mean is not None and (len(mean) != first.image_channels or len(mean[0]) != first.resolution):
            raise SpecError(
                f"the diffusion's colour statistics (data_mean, data_cross_spectrum) are for {len(mean)} channel(s) "
                f"at {len(mean[0])} px ({len(self.diffusion.data_cross_spectrum)} rings), but the experts see "
                f"{first.image_channels} channel(s) at {first.resolution} px: measure them at the experts' resolution"
            )
        for i, e in enumerate(self.experts):
            if (e.image_channels, e.resolution) != (first.image_channels, first.resolution):
                raise SpecError(
                    f"expert {i} has {e.image_channels} channels at {e.resolution} px but expert 0 has "
                    f"{first.image_channels} at {first.resolution} px: all experts must see the same images"
                )

    def _validate_intervals(self) -> None:
        T = self.diffusion.timesteps
        expected_start = 0
        for i, iv in enumerate(self.intervals):
            if len(iv) != 2 or not all(_is_int(v) for v in iv):
                raise SpecError(f"interval {i} must be a pair of integers [start, end), got {list(iv)}")
            lo, hi = iv
            if lo >= hi:
                raise SpecError(f"interval {i} [{lo}, {hi}) is empty: start must be below end")
            if lo > expected_start:
                raise SpecError(
                    f"gap between intervals: t in [{expected_start}, {lo}) belongs to no expert; "
                    f"interval {i} must start at {expected_start}"
                )
            if lo < expected_start:
                raise SpecError(
                    f"overlapping intervals: interval {i} starts at {lo} but t < {expected_start} is "
                    f"already owned; interval {i} must start at {expected_start}"
                )
            expected_start = hi
        if expected_start != T:
            raise SpecError(
                f"intervals end at {expected_start} but must cover [0, T) with T = {T}: the last "
                f"interval must end at {T}"
            )

    # ---- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "diffusion": self.diffusion.to_dict(),
            "intervals": [list(iv) for iv in self.intervals],
            "soft_assignment": list(self.soft_assignment),
            "out_of_interval": self.out_of_interval,
            "experts": [e.to_dict() for e in self.experts],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemeSpec:
        if not isinstance(data, dict):
            raise SpecError("a MemeSpec JSON must be an object")
        kwargs = _checked_kwargs(cls, data, "spec")
        _require(kwargs, SPEC_REQUIRED, "spec")
        experts = kwargs["experts"]
        if not isinstance(experts, list) or not all(isinstance(e, dict) for e in experts):
            raise SpecError("spec 'experts' must be a list of expert objects")
        for n, expert in enumerate(experts):
            _require(expert, EXPERT_REQUIRED, f"expert {n}")
        kwargs["experts"] = tuple(ExpertSpec.from_dict(e) for e in experts)
        if not isinstance(kwargs["diffusion"], dict):
            raise SpecError("spec 'diffusion' must be an object")
        kwargs["diffusion"] = DiffusionSpec.from_dict(kwargs["diffusion"])
        for key in ("intervals", "soft_assignment"):
            if not isinstance(kwargs[key], list):
                raise SpecError(f"spec {key!r} must be a list")
        if not all(isinstance(iv, list) for iv in kwargs["intervals"]):
            raise SpecError("spec 'intervals' must be a list of [start, end) pairs")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> MemeSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"spec is not valid JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_dict(data)

    def with_resolution(self, resolution: int) -> MemeSpec:
        """The same spec with every expert at ``resolution`` (re-validated)."""
        experts = tuple(e.with_resolution(resolution) for e in self.experts)
        return dataclasses.replace(self, experts=experts)

    def with_image_channels(self, channels: int) -> MemeSpec:
        """The same spec with every expert seeing ``channels`` input channels, e.g. an autoencoder's
        latent channels (re-validated)."""
        experts = tuple(dataclasses.replace(e, image_channels=channels) for e in self.experts)
        return dataclasses.replace(self, experts=experts)


# the fields every memekit version wrote: reading a spec refuses JSON without them (no silent defaults);
# a field added to a spec later must stay out of these, so that older specs keep loading
EXPERT_REQUIRED = ("image_channels", "resolution", "base_width", "channel_mult", "blocks_per_stage", "attention_share",
                   "head_dim", "attention_pool", "dropout")
DIFFUSION_REQUIRED = ("timesteps", "schedule", "prediction")
SPEC_REQUIRED = ("experts", "intervals", "soft_assignment", "diffusion", "out_of_interval")


def uniform_intervals(timesteps: int, n: int) -> tuple[tuple[int, int], ...]:
    """The paper's uniform split: interval n is ``[n*T//N, (n+1)*T//N)``."""
    if not _is_int(n) or n < 1 or n > timesteps:
        raise SpecError(f"number of intervals must be in [1, {timesteps}], got {n!r}")
    cuts = [k * timesteps // n for k in range(n + 1)]
    return tuple((cuts[k], cuts[k + 1]) for k in range(n))


def intervals_from_boundaries(boundaries: list[int] | tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """``(0, b1, ..., T)`` -> ``((0, b1), (b1, b2), ..., (b_{N-1}, T))``."""
    b = list(boundaries)
    return tuple((b[k], b[k + 1]) for k in range(len(b) - 1))


def load_spec(path: str | Path) -> MemeSpec:
    """Read a MemeSpec from a JSON file, with a one-line error for a missing or bad file."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist: give a path to a MemeSpec JSON or a preset name")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read spec file {str(p)!r}: {err}") from None
    try:
        return MemeSpec.from_json(text)
    except SpecError as err:
        raise SpecError(f"{p.name}: {err}") from None


def save_spec(spec: MemeSpec, path: str | Path) -> Path:
    """Write ``spec`` as JSON atomically (temp file + rename)."""
    return atomic_write_text(path, spec.to_json() + "\n")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _checked_kwargs(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    return checked_fields(cls, data, what, f"{what} field")


def _require(kwargs: dict[str, Any], required: tuple[str, ...], what: str) -> None:
    """A one-line :class:`SpecError` naming every field of ``required`` that ``kwargs`` lacks."""
    missing = [name for name in required if name not in kwargs]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise SpecError(f"{what} is missing {names}: add {'them' if len(missing) > 1 else 'it'} (memekit fills in no "
                        "defaults; 'memekit space show meme-paper' prints a complete spec)")

