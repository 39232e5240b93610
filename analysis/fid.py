"""FID and KID of Inception pool3 features, with pytorch-fid's numbers, offline.

Both metrics compare the 2048-d pool3 features of the TF 2015-12-05 Inception-v3
(:mod:`memekit.analysis.inception`: weights, network, preprocessing protocol, image sets):

- FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule") fits Gaussians and
  measures their Fréchet distance ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, with
  pytorch-fid 0.3.0's float64 mean, ``np.cov`` and ``calculate_frechet_distance``: a folder of
  images gives the same value as ``python -m pytorch_fid`` (protocol ``"pytorch-fid"``).
- KID (Binkowski et al. 2018, "Demystifying MMD GANs"; :mod:`memekit.analysis.kid`, re-exported
  here) is the unbiased MMD^2 with the cubic kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over
  random subsets. Unlike FID it has no bias in n, so it can be read at small n.

:func:`features` is the first-class result: float32 (n, 2048) features with n, resolution,
fingerprint, weights label and protocol. Features of data sources (``builtin:...``, ``data:...``)
are cached under ``$MEMEKIT_CACHE/fid/features/``, keyed by the source's fingerprint, split, n,
resolution, weights file and protocol, so a second call does no Inception pass. Statistics
(mu, sigma) derive from features; statistics files (pytorch-fid's or memekit's) still work for FID.
Every result carries the label of its weights and its protocol. Small-n FID is biased upward:
compare values only at the same n against the same reference set.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from pytorch_fid.fid_score import IMAGE_EXTENSIONS, calculate_frechet_distance
from pytorch_fid.inception import InceptionV3

from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write

from .device import resolve_device
from .inception import (
    CONVERTED_WEIGHTS_NAME,
    DATA_PREFIX,
    FEATURE_DIM,
    FID_HELPER_PACKAGE,
    FID_HELPER_SHA1,
    LABEL_CONVERTED,
    LABEL_PYTORCH_FID,
    PROTOCOLS,
    PYTORCH_FID_WEIGHTS_NAME,
    WEIGHTS_ENV,
    ImageSet,
    ImageSource,
    InceptionWeights,
    array_batches,
    array_set,
    check_images,
    check_protocol,
    clean_resize,
    convert_fid_helper_weights,
    data_path,
    data_source,
    fid_helper_torchscript_path,
    image_files,
    inception_model,
    no_weights_message,
    open_image_set,
    pool3_features,
    reference_source,
    resolve_inception_weights,
    source_set,
)
from .kid import kid, kid_subsets, polynomial_kernel, subset_mmd2

__all__ = [
    "CONVERTED_WEIGHTS_NAME", "DATA_PREFIX", "FEATURE_DIM", "FID_HELPER_PACKAGE", "FID_HELPER_SHA1",
    "IMAGE_EXTENSIONS", "LABEL_CONVERTED", "LABEL_PYTORCH_FID", "PROTOCOLS", "PYTORCH_FID_WEIGHTS_NAME",
    "STATS_KEYS", "WEIGHTS_ENV", "FidResult", "ImageSource", "InceptionFeatures", "InceptionStats",
    "InceptionV3", "InceptionWeights", "calculate_frechet_distance", "clean_resize", "convert_fid_helper_weights",
    "data_source", "features", "fid", "fid_helper_torchscript_path", "frechet_distance", "gaussian", "image_files",
    "inception_model", "inception_statistics", "kid", "kid_subsets", "load_features", "load_statistics",
    "no_weights_message", "polynomial_kernel", "protocol_label", "reference_source", "resolve_inception_weights",
    "save_features", "save_statistics", "source_images", "statistics", "subset_mmd2",
]

log = logging.getLogger(__name__)

STATS_KEYS = ("mu", "sigma", "n", "fingerprint", "resolution", "weights_label", "protocol")


def protocol_label(protocol: str) -> str:
    """How a protocol is printed next to a number: ``pytorch-fid (bilinear 299)``."""
    return PROTOCOLS.get(protocol, "not recorded")


@dataclass(frozen=True)
class InceptionStats:
    """Gaussian of pool3 features: ``mu`` (2048,), ``sigma`` (2048, 2048), float64.

    ``n`` is None and ``weights_label``/``fingerprint``/``protocol`` are "" when the file did not
    record them (pytorch-fid's own stats files); ``resolution`` is the image side, 0 if unknown or mixed.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    fingerprint: str
    resolution: int
    weights_label: str
    protocol: str = ""


@dataclass(frozen=True, eq=False)
class InceptionFeatures:
    """Pool3 features of one image set: ``features`` float32 (n, 2048), one row per image."""

    features: np.ndarray
    n: int
    resolution: int  # image side, 0 if not square
    fingerprint: str
    weights_label: str
    protocol: str

    @cached_property
    def statistics(self) -> InceptionStats:
        """The Gaussian of the features (see :func:`gaussian`), computed once."""
        mu, sigma = gaussian(self.features)
        return InceptionStats(mu, sigma, self.n, self.fingerprint, self.resolution, self.weights_label, self.protocol)


@dataclass(frozen=True)
class FidResult:
    """FID of two image sets, their sizes, weights label, protocol, statistics and (where the
    input had them) features, for KID."""

    value: float
    n_a: int | None
    n_b: int | None
    weights_label: str
    stats_a: InceptionStats
    stats_b: InceptionStats
    protocol: str = ""
    features_a: InceptionFeatures | None = field(default=None, repr=False)
    features_b: InceptionFeatures | None = field(default=None, repr=False)

    def __str__(self) -> str:
        n_a, n_b = (str(n) if n is not None else "?" for n in (self.n_a, self.n_b))
        return (f"FID {self.value:.3f} (n={n_a} vs {n_b}; protocol {protocol_label(self.protocol)}; "
                f"weights: {self.weights_label})")


# ---- Fréchet distance -------------------------------------------------------------------------
def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu = mean_i f_i and sigma = sum_i (f_i - mu)(f_i - mu)^T / (N - 1), float64 as in pytorch-fid."""
    if len(features) < 2:
        raise MemekitError(f"FID needs at least 2 images per set, got {len(features)}")
    rows = np.asarray(features, dtype=np.float64)  # pytorch-fid stores float32 activations as float64
    return np.mean(rows, axis=0), np.cov(rows, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau 1982).

    pytorch-fid's ``calculate_frechet_distance``: a singular product gets eps = 1e-6 added to both
    diagonals (its printed notice goes to the log), a small imaginary part of the square root is
    dropped.
    """
    if np.shape(mu1) != np.shape(mu2) or np.shape(sigma1) != np.shape(sigma2):
        raise MemekitError(f"statistics differ in shape: mu {np.shape(mu1)} vs {np.shape(mu2)}, "
                           f"sigma {np.shape(sigma1)} vs {np.shape(sigma2)}")
    notice = io.StringIO()
    with contextlib.redirect_stdout(notice):
        value = calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    if notice.getvalue().strip():
        log.warning("pytorch-fid: %s", notice.getvalue().strip())
    return float(value)


def inception_statistics(images: np.ndarray | torch.Tensor, model: InceptionV3, batch_size: int = 50,
                         device: str | torch.device | None = None, progress: bool = False,
                         protocol: str = "pytorch-fid") -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of pool3 features of uint8 (N, H, W, 3) images or float (N, 3, H, W) in [0, 1].

    uint8 input is divided by 255 exactly as pytorch-fid's ``ToTensor`` does; the model resizes
    to 299 and scales to [-1, 1]. ``device`` defaults to the model's.
    """
    check_images(images)
    _check_batch_size(batch_size)
    if device is not None:
        model = model.to(resolve_device(device))
    model.eval()
    rows = pool3_features(array_batches(images, batch_size), len(images), model, protocol, progress,
                          total=-(-len(images) // batch_size))
    return gaussian(rows)


# ---- files ------------------------------------------------------------------------------------
def save_statistics(path: str | os.PathLike, stats: InceptionStats,
                    features: InceptionFeatures | None = None) -> Path:
    """Write ``stats`` to ``path`` (.npz with :data:`STATS_KEYS`), atomically; pytorch-fid reads
    such files too (it uses mu and sigma). With ``features`` the file also holds them (key
    ``features``), so that KID can be computed from it later."""
    path = Path(path)
    if path.suffix != ".npz":
        raise MemekitError(f"statistics file {str(path)!r} must end in .npz")
    extra = {} if features is None else {"features": features.features}
    atomic_write(path, lambda f: np.savez(f, mu=stats.mu, sigma=stats.sigma, **_meta(stats), **extra))
    return path


def save_features(path: str | os.PathLike, feats: InceptionFeatures) -> Path:
    """Write features and their metadata to ``path`` (.npz), atomically (no statistics)."""
    path = Path(path)
    atomic_write(path, lambda f: np.savez(f, features=feats.features, **_meta(feats)))
    return path


def _meta(item: InceptionStats | InceptionFeatures) -> dict[str, np.ndarray]:
    return dict(n=np.int64(-1 if item.n is None else item.n), fingerprint=np.str_(item.fingerprint),
                resolution=np.int64(item.resolution), weights_label=np.str_(item.weights_label),
                protocol=np.str_(item.protocol))


def load_statistics(path: str | os.PathLike) -> InceptionStats:
    """Read a statistics .npz (memekit's, or pytorch-fid's with only mu and sigma); validates keys,
    shapes and finiteness."""
    path = Path(path)
    return _stats_from_npz(_read_npz(path), path)


def load_features(path: str | os.PathLike, n: int | None = None) -> InceptionFeatures:
    """Read a features .npz (:func:`save_features`, or :func:`save_statistics` with features);
    ``n`` keeps the first n rows."""
    path = Path(path)
    return _features_from_npz(_read_npz(path), path, n)


def _stats_from_npz(data: dict[str, np.ndarray], path: Path) -> InceptionStats:
    missing = [k for k in ("mu", "sigma") if k not in data]
    if missing:
        raise MemekitError(f"{path} is not a statistics file: no {' or '.join(missing)} "
                           f"(found: {', '.join(data) or 'nothing'}); expected keys {', '.join(STATS_KEYS)}")
    mu, sigma = np.asarray(data["mu"], dtype=np.float64), np.asarray(data["sigma"], dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise MemekitError(f"{path}: mu {mu.shape} and sigma {sigma.shape} must be (d,) and (d, d)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise MemekitError(f"{path}: mu or sigma contains NaN or inf")
    n, resolution, fingerprint, label, protocol = _read_meta(data, path)
    return InceptionStats(mu, sigma, None if n < 0 else n, fingerprint, resolution, label, protocol)


def _features_from_npz(data: dict[str, np.ndarray], path: Path, n: int | None) -> InceptionFeatures:
    rows = np.asarray(data["features"])
    if rows.ndim != 2 or not np.isfinite(rows).all():
        raise MemekitError(f"{path}: 'features' must be a finite (n, d) array, got shape {rows.shape}")
    if n is not None and n > len(rows):
        raise MemekitError(f"{path} has features of {len(rows)} images, fewer than n={n}")
    rows = rows[:n].astype(np.float32)
    _, resolution, fingerprint, label, protocol = _read_meta(data, path)
    return InceptionFeatures(rows, len(rows), resolution, fingerprint, label, protocol)


def _read_meta(data: dict[str, np.ndarray], path: Path) -> tuple[int, int, str, str, str]:
    try:
        return (int(data["n"]) if "n" in data else -1, int(data["resolution"]) if "resolution" in data else 0,
                *(str(data[k]) if k in data else "" for k in ("fingerprint", "weights_label", "protocol")))
    except (TypeError, ValueError):
        raise MemekitError(f"{path}: n, resolution, fingerprint, weights_label and protocol must be "
                           f"scalars") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise MemekitError(f"{str(path)!r} does not exist: give an image folder, an .npz of images or statistics")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zlib.error) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MemekitError(f"cannot read {str(path)!r} as .npz: {reason}") from None


# ---- sources -> features ----------------------------------------------------------------------
Opened = InceptionStats | InceptionFeatures | ImageSet | str


def _open(source: ImageSource, n: int | None) -> Opened:
    """A folder, .npz (images, features or statistics), array, or a data source (returned as its
    string: it is loaded, or read from the cache, later)."""
    opened = open_image_set(source, n)
    if not isinstance(opened, Path):
        return opened
    data = _read_npz(opened)
    if "features" in data:
        return _features_from_npz(data, opened, n)
    if "images" in data and "mu" not in data:
        return array_set(data["images"], n, f"{opened} 'images'")
    return _stats_from_npz(data, opened)


def _features_cache_path(source: str, n: int | None, resolution: int, split: str, protocol: str,
                         weights: InceptionWeights) -> Path:
    """Where a data source's features live: ``$MEMEKIT_CACHE/fid/features/<key>.npz``, keyed by the
    source's fingerprint, split, n, resolution, the weights file and the protocol."""
    from memekit.analysis.data import cache_dir, source_fingerprint

    st = weights.path.stat()
    key = (f"{source}|{source_fingerprint(data_path(source))}|{split}|{n}|{resolution}|{weights.label}|"
           f"{st.st_size}|{st.st_mtime_ns}|{protocol}")
    return cache_dir() / "fid" / "features" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.npz"


def _cached_features(path: Path) -> InceptionFeatures | None:
    if not path.is_file():
        return None
    try:
        return load_features(path)
    except (MemekitError, KeyError) as err:
        log.warning("ignoring unreadable features cache %s: %s", path, err)
        return None


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MemekitError(f"batch size must be a positive integer, got {batch_size!r}")


def _open_all(sources: list[ImageSource], n: int | None, resolution: int | None, split: str,
              protocol: str) -> tuple[list[Opened], int | None]:
    """Open every source (bad input fails before any inference); the data-source resolution."""
    check_protocol(protocol)
    if n is not None and (not isinstance(n, int) or n < 2):
        raise MemekitError(f"n must be an integer >= 2, got {n!r}")
    opened = [_open(s, n) for s in sources]
    for source, item in zip(sources, opened, strict=True):
        recorded = getattr(item, "protocol", "")
        if isinstance(item, InceptionStats | InceptionFeatures) and recorded and recorded != protocol:
            raise MemekitError(f"{source} was computed with protocol {recorded}, not {protocol}: pass "
                               f"--protocol {recorded} or recompute it from the images")
    if any(isinstance(o, str) for o in opened):
        return opened, resolution or _infer_resolution(opened)
    if resolution is not None or split != "all":
        raise MemekitError("resolution and split apply only to data sources (such as builtin:shapes), "
                           "not to folders, .npz files or arrays")
    return opened, None


def _collect(sources: list[ImageSource], n: int | None, batch_size: int, device: str | torch.device | None,
             weights: str | os.PathLike | None, resolution: int | None, split: str, protocol: str,
             progress: bool) -> list[InceptionStats | InceptionFeatures]:
    """Features (or stored statistics) of every source, with one Inception network for all."""
    _check_batch_size(batch_size)
    opened, resolution = _open_all(sources, n, resolution, split, protocol)
    device = resolve_device(device)
    resolved: InceptionWeights | None = None
    todo: list[InceptionStats | InceptionFeatures | tuple[ImageSet, Path | None]] = []
    for item in opened:
        if isinstance(item, InceptionStats | InceptionFeatures):
            todo.append(item)
            continue
        resolved = resolved or resolve_inception_weights(weights)
        if isinstance(item, str):
            assert resolution is not None
            cache = _features_cache_path(item, n, resolution, split, protocol, resolved)
            cached = _cached_features(cache)
            todo.append(cached or (source_set(item, n, resolution, split, progress), cache))
        else:
            todo.append((item, None))
    model: InceptionV3 | None = None
    out: list[InceptionStats | InceptionFeatures] = []
    for entry in todo:
        if isinstance(entry, tuple):
            images, cache = entry
            assert resolved is not None
            model = model or inception_model(resolved, device)
            rows = pool3_features(images.batches(batch_size), images.n, model, protocol, progress,
                                  total=-(-images.n // batch_size))
            entry = InceptionFeatures(rows, images.n, images.resolution, images.fingerprint, resolved.label, protocol)
            if cache is not None:
                save_features(cache, entry)
        out.append(entry)
    return out


def _infer_resolution(opened: list[Opened]) -> int:
    sides = {o.resolution for o in opened if not isinstance(o, str) and o.resolution > 0}
    if len(sides) != 1:
        source = next(o for o in opened if isinstance(o, str))
        raise MemekitError(f"cannot tell at which resolution to load data source {source!r}: pass --resolution")
    return sides.pop()


def _joint_label(stats_a: InceptionStats, stats_b: InceptionStats) -> str:
    labels = sorted({s.weights_label for s in (stats_a, stats_b) if s.weights_label})
    if len(labels) > 1:
        log.warning("the two statistics were computed with different Inception weights: %s", " vs ".join(labels))
        return f"{stats_a.weights_label} vs {stats_b.weights_label}"
    return labels[0] if labels else "not recorded in the statistics files"


def _stats_only(source: ImageSource) -> str:
    return (f"{source} holds statistics (mu, sigma) only, no per-image features: give its images, or a "
            f"features .npz (memekit fid --save-stats writes one)")


# ---- public entry points ----------------------------------------------------------------------
def features(source: ImageSource, n: int | None = None, batch_size: int = 50,
             device: str | torch.device | None = None, weights: str | os.PathLike | None = None,
             *, resolution: int | None = None, split: str = "all", protocol: str = "pytorch-fid",
             progress: bool = False) -> InceptionFeatures:
    """Pool3 features of one image set (see :func:`fid` for what ``source`` may be; a statistics
    file has none and raises). Data-source features are cached."""
    item = _collect([source], n, batch_size, device, weights, resolution, split, protocol, progress)[0]
    if isinstance(item, InceptionStats):
        raise MemekitError(_stats_only(source))
    return item


def statistics(source: ImageSource, n: int | None = None, batch_size: int = 50,
               device: str | torch.device | None = None, weights: str | os.PathLike | None = None,
               *, resolution: int | None = None, split: str = "all", protocol: str = "pytorch-fid",
               progress: bool = False) -> InceptionStats:
    """Inception statistics of one image set (see :func:`fid` for what ``source`` may be)."""
    item = _collect([source], n, batch_size, device, weights, resolution, split, protocol, progress)[0]
    return item.statistics if isinstance(item, InceptionFeatures) else item


def fid(a: ImageSource, b: ImageSource, n: int | None = None, batch_size: int = 50,
        device: str | torch.device | None = None, weights: str | os.PathLike | None = None,
        *, resolution: int | None = None, split: str = "all", protocol: str = "pytorch-fid",
        progress: bool = False) -> FidResult:
    """FID between image sets ``a`` and ``b``, as ``python -m pytorch_fid a b`` computes it.

    Each of ``a`` and ``b`` is a folder of images (read like pytorch-fid: files directly inside,
    sorted, no resizing), an ``.npz`` with ``images`` (uint8 NHWC), ``features`` or ``mu`` and
    ``sigma`` (statistics), a uint8 (N, H, W, 3) array or a float (N, 3, H, W) tensor in [0, 1], or
    a data source of :func:`memekit.analysis.data.load_images` (``builtin:shapes``, or
    ``data:PATH`` for an image folder or .npz read by memekit's loader, see :func:`data_source`),
    loaded at ``resolution`` (default: the other set's) from ``split``; data-source features are
    cached. ``n`` takes the first n images of every image set (statistics are used as stored).
    ``weights``: see :func:`resolve_inception_weights`; ``protocol``: ``"pytorch-fid"`` or
    ``"clean"`` (:data:`PROTOCOLS`). The result keeps both sides' features (for :func:`kid`).
    """
    items = _collect([a, b], n, batch_size, device, weights, resolution, split, protocol, progress)
    stats_a, stats_b = (i.statistics if isinstance(i, InceptionFeatures) else i for i in items)
    value = frechet_distance(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma)
    recorded = protocol if any(i.protocol for i in items) else ""
    feats_a, feats_b = (i if isinstance(i, InceptionFeatures) else None for i in items)
    return FidResult(value, stats_a.n, stats_b.n, _joint_label(stats_a, stats_b), stats_a, stats_b,
                     recorded, feats_a, feats_b)


def source_images(source: ImageSource, n: int | None = None, *, resolution: int | None = None,
                  split: str = "all") -> np.ndarray | None:
    """The uint8 (N, H, W, 3) images of ``source`` as :func:`fid` reads them (the first ``n``; data
    sources at ``resolution`` from ``split``); None for statistics or features files and tensors."""
    item = _open(source, n)
    if isinstance(item, str):
        if resolution is None:
            raise MemekitError(f"cannot tell at which resolution to load data source {item!r}: pass --resolution")
        item = source_set(item, n, resolution, split, progress=False)
    return item.uint8_images() if isinstance(item, ImageSet) else None
