"""Sample quality of image sets and of trained runs: FID, KID and the log-spectral distance.

:func:`compare_sets` measures two image sets (``memekit fid A B``); :func:`sample_metrics` samples
a run (or checkpoint) with several seeds and measures every seed's images against one reference
set (``memekit fid RUN REFERENCE --seeds S``, ``memekit fidelity --target kid``, benchmarks).

FID and KID compare Inception pool3 features (:mod:`memekit.analysis.fid`), LSD compares pixel
power spectra (:func:`memekit.analysis.spectra.log_spectral_distance`). Small-n FID is biased
upward; KID is not, which is why both are reported. Repeats over seeds are reported as mean and
sample std (ddof = 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memekit.analysis.device import resolve_device
from memekit.analysis.fid import (
    FidResult,
    InceptionFeatures,
    features,
    fid,
    frechet_distance,
    source_images,
)
from memekit.analysis.inception import check_protocol, is_data_source
from memekit.analysis.kid import kid
from memekit.analysis.spectra import (
    LogSpectralDistance,
    data_power_spectrum,
    log_spectral_distance,
    log_spectral_distance_of_spectra,
    radial_bins,
)
from memekit.analysis.stats import sample_sd
from memekit.space.errors import MemekitError
from memekit.space.progress import say_error_line

# sample_images seeds batch k of a call with ``seed + k``: the repeats of sample_metrics start
# this far apart, so they share no batch unless a repeat draws more than a million batches
SEED_STRIDE = 1_000_003


def sampling_seed(repeat: int) -> int:
    """The ``seed`` that repeat ``repeat`` (0, 1, ...) passes to ``sample_images``: ``repeat * 1_000_003``."""
    return repeat * SEED_STRIDE


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is what ``load_model`` reads: a run folder (with ``checkpoints/``) or a ``.pt``."""
    p = Path(path)
    return (p.is_dir() and (p / "checkpoints").is_dir()) or (p.is_file() and p.suffix == ".pt")


def _json_safe(value: Any) -> Any:
    """NaN -> None (JSON has no NaN), recursively through lists and dicts."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# ---- two image sets ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SetMetrics:
    """FID, KID (None when a side holds statistics only) and LSD (None unless both sides are uint8
    image sets of one square size) of two image sets; ``notes`` say why a metric is missing."""

    fid: FidResult
    kid_mean: float | None
    kid_std: float | None  # spread over subsets (ddof 0)
    kid_subsets: int
    kid_subset_size: int  # rows per subset actually used: min(requested, n_a, n_b)
    lsd: LogSpectralDistance | None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        lsd = self.lsd._asdict() if self.lsd is not None else {"lsd": None}
        return _json_safe({
            "fid": self.fid.value, "n_a": self.fid.n_a, "n_b": self.fid.n_b, "protocol": self.fid.protocol,
            "weights_label": self.fid.weights_label, "kid_mean": self.kid_mean, "kid_std": self.kid_std,
            "kid_subsets": self.kid_subsets, "kid_subset_size": self.kid_subset_size,
            **{("lsd" if k == "lsd" else f"lsd_{k}"): v for k, v in lsd.items()}, "notes": list(self.notes)})


def compare_sets(a: Any, b: Any, n: int | None = None, batch_size: int = 50, device: str | None = None,
                 weights: str | None = None, *, resolution: int | None = None, split: str = "all",
                 protocol: str = "pytorch-fid", kid_subsets: int = 100, kid_subset_size: int = 1000,
                 progress: bool = False) -> SetMetrics:
    """FID (:func:`memekit.analysis.fid.fid`, same arguments), KID over ``kid_subsets`` subsets of
    ``kid_subset_size`` rows when both sides have features, and the log-spectral distance of A
    against B when both are image sets of one size."""
    result = fid(a, b, n, batch_size, device, weights, resolution=resolution, split=split, protocol=protocol,
                 progress=progress)
    notes = []
    kid_mean = kid_std = None
    size = min(kid_subset_size, result.n_a or 0, result.n_b or 0)
    if result.features_a is not None and result.features_b is not None:
        kid_mean, kid_std = kid(result.features_a, result.features_b, kid_subsets, kid_subset_size)
    else:
        side = "A" if result.features_a is None else "B"
        notes.append(f"KID not computed: {side} holds statistics (mu, sigma) only, no per-image features")
    images = [source_images(s, n, resolution=stats.resolution or None, split=split)
              for s, stats in ((a, result.stats_a), (b, result.stats_b))]
    lsd = None
    if any(i is None for i in images):
        notes.append("LSD not computed: it needs the images of both sides, not statistics or features")
    elif images[0].shape[1:] != images[1].shape[1:] or images[0].shape[1] != images[0].shape[2]:
        notes.append(f"LSD not computed: it needs square images of one size, got {images[0].shape[1:3]} "
                     f"and {images[1].shape[1:3]}")
    else:
        lsd = log_spectral_distance(images[0], images[1], device=str(resolve_device(device)))
    return SetMetrics(result, kid_mean, kid_std, kid_subsets, size, lsd, tuple(notes))


# ---- a run's samples, over seeds --------------------------------------------------------------
@dataclass(frozen=True)
class SampleMetrics:
    """FID, KID and LSD of a run's samples against a reference, over seeds: means and sample stds
    (ddof 1, NaN for one seed) of the per-seed values (``per_seed``: one dict per seed with
    ``seed``, ``sampling_seed``, ``fid``, ``kid_mean``, ``kid_std`` (over subsets), ``lsd``,
    ``lsd_low``, ``lsd_mid``, ``lsd_high``). LSD is NaN when the reference has no images of the
    samples' size."""

    fid_mean: float
    fid_std: float
    kid_mean: float
    kid_std: float
    lsd_mean: float
    lsd_std: float
    per_seed: list[dict[str, Any]]
    n: int
    n_ref: int
    protocol: str
    weights_label: str
    steps: int = 0
    reference: str = ""
    checkpoint: str = ""
    checkpoint_step: int = 0  # training step of the sampled checkpoint
    resolution: int = 0
    kid_subsets: int = 0
    kid_subset_size: int = 0  # rows per subset actually used: min(requested, n, n_ref)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (NaN as None)."""
        return _json_safe({**asdict(self), "notes": list(self.notes)})


def _reference(reference: str, side: int, split: str, protocol: str, device: Any, weights: str | None,
               batch: int, progress: bool) -> tuple[InceptionFeatures, np.ndarray | None]:
    """Reference features (cached for data sources) and its radial power spectrum (None when its
    images are not ``side`` x ``side``, or it is a features file)."""
    loader = dict(resolution=side, split=split) if is_data_source(reference) else {}
    ref = features(reference, None, batch, device, weights, protocol=protocol, progress=progress, **loader)
    images = source_images(reference, None, **loader)
    if images is None or images.shape[1:3] != (side, side):
        return ref, None
    return ref, data_power_spectrum(images, device=device)


def _seed_metrics(images: np.ndarray, ref: InceptionFeatures, ref_power: np.ndarray | None, protocol: str,
                  device: Any, weights: str | None, batch: int, kid_subsets: int,
                  kid_subset_size: int) -> dict[str, float]:
    """FID, KID and LSD of one seed's uint8 samples against the reference."""
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)  # grey -> RGB, as PIL's convert("RGB")
    gen = features(images, None, batch, device, weights, protocol=protocol)
    fid_value = frechet_distance(gen.statistics.mu, gen.statistics.sigma, ref.statistics.mu, ref.statistics.sigma)
    kid_mean, kid_std = kid(gen, ref, kid_subsets, kid_subset_size)
    out = {"fid": fid_value, "kid_mean": kid_mean, "kid_std": kid_std}
    lsd = (log_spectral_distance_of_spectra(data_power_spectrum(images, device=device), ref_power,
                                            radial_bins(images.shape[1]).frequency)
           if ref_power is not None else LogSpectralDistance(math.nan, math.nan, math.nan, math.nan))
    return {**out, "lsd": lsd.lsd, "lsd_low": lsd.low, "lsd_mid": lsd.mid, "lsd_high": lsd.high}


def sample_metrics(run: str | Path, reference: str, n: int, steps: int = 25, seeds: int = 1, *,
                   resolution: int | None = None, split: str = "reference", protocol: str = "pytorch-fid",
                   batch: int = 250, device: str | None = None, weights: str | None = None,
                   kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = False,
                   inception_batch: int = 50, first_seed: int = 0, autoencoder: str | None = None,
                   say: Callable[[str], None] | None = None) -> SampleMetrics:
    """Sample ``n`` images ``seeds`` times from ``run`` (a run folder or checkpoint, EMA weights,
    DDIM with ``steps`` steps, sampling batch ``batch``) and measure each seed's images against
    ``reference`` (a source as :func:`memekit.analysis.fid.fid` takes it; data sources are loaded
    at the model's resolution from ``split``, folders and files are used as they are).

    Repeat s samples with ``seed = s * 1_000_003`` (:func:`sampling_seed`): ``sample_images``
    seeds its batch k with ``seed + k``, so consecutive seeds would share batches. The reference
    features are computed once (and cached on disk for data sources). ``resolution``, if given,
    must equal the model's. ``first_seed``: the repeats are ``first_seed .. first_seed + seeds - 1``
    (so a driver can sample one seed at a time and resume). ``progress``: bars, and a status line per
    seed to ``say`` (default: stderr).

    A run trained on latents is scored on its decoded images (the recorded autoencoder, or the one in
    the folder ``autoencoder``; a one-line error when it is not available), at the image resolution
    the latents encode, against ``reference``'s images at that resolution.
    """
    from .sampling import load_model, run_decoder, sample_images

    check_protocol(protocol)
    if not (isinstance(n, int) and n >= 2 and isinstance(seeds, int) and seeds >= 1 and steps >= 1):
        raise MemekitError(f"sample metrics need n >= 2, seeds >= 1 and steps >= 1, got {n}, {seeds} and {steps}")
    device = resolve_device(device)
    model, spec, state = load_model(run, device=device)
    decoder = run_decoder(state, autoencoder, device)
    side = spec.experts[0].resolution * (decoder.resolution_factor if decoder is not None else 1)
    if resolution is not None and resolution != side:
        raise MemekitError(f"{run} samples {side} px images: --resolution must be {side} (or left out)")
    ref, ref_power = _reference(reference, side, split, protocol, device, weights, inception_batch, progress)
    per_seed = []
    for repeat in range(first_seed, first_seed + seeds):
        start = time.perf_counter()
        images = sample_images(model, spec, n, steps=steps, seed=sampling_seed(repeat), device=device, batch=batch,
                               progress=progress, decoder=decoder)
        values = _seed_metrics(images, ref, ref_power, protocol, device, weights, inception_batch, kid_subsets,
                               kid_subset_size)
        per_seed.append({"seed": repeat, "sampling_seed": sampling_seed(repeat), **values})
        if progress:  # a status line per seed: bars are not drawn in logs, and a seed can take many minutes
            (say or say_error_line)(f"seed {repeat} ({len(per_seed)}/{seeds}): {n:,} samples, FID "
                                    f"{values['fid']:.2f}, KID {values['kid_mean']:.4f} "
                                    f"({time.perf_counter() - start:.0f} s)")
    notes = () if ref_power is not None else (f"LSD not computed: {reference} has no {side} px images",)

    def over_seeds(key: str) -> tuple[float, float]:
        values = [s[key] for s in per_seed]
        return float(np.mean(values)), sample_sd(values)

    return SampleMetrics(*over_seeds("fid"), *over_seeds("kid_mean"), *over_seeds("lsd"), per_seed, n, ref.n,
                         protocol, ref.weights_label, steps, reference, state["path"], int(state["step"]), side,
                         kid_subsets, min(kid_subset_size, n, ref.n), notes)

