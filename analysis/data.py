"""The one image loader of memekit: folders, ``.npz`` files and the built-in ``builtin:shapes``.

Sources (``load_images(source, resolution)``):

- a folder, searched recursively for ``.jpg/.jpeg/.png/.webp`` files (sorted by relative path);
  unreadable files are skipped and counted in the log; no readable image is an error;
- a ``.npz`` file holding an ``images`` array, uint8 ``(N, H, W, C)`` or ``(N, C, H, W)`` with
  C in {1, 3}, or float in [0, 1];
- ``builtin:shapes`` or ``builtin:shapes:N``: N (default 4096) deterministic dead-leaves images
  (random overlapping coloured discs and rectangles with radii ~ r^-3, which gives the ~1/f^2
  power spectrum of natural images), rendered at any resolution, no download.

Every image is center-cropped to a square and resized with an anti-aliased bicubic filter to
``resolution``; the result is uint8 ``(N, resolution, resolution, 3)`` RGB. Converted arrays are
cached under ``$MEMEKIT_CACHE`` (default ``~/.cache/memekit``)/data, keyed by the source
fingerprint and the resolution.

**Latent data sets** (``.npz`` files with a ``latents`` array, :mod:`memekit.analysis.latents`, made
by ``memekit encode``) are read by :func:`load_data`: float32 ``(N, C, H, W)`` latents normalised to
unit scale, at their own size. :func:`load_data` is what models train on (images or latents),
:func:`to_model_input` what they see (images in [-1, 1], latents as they are), and
:func:`check_data_for_spec` says in one line when a spec's channel count or size does not fit.

Splits are fixed and documented: an image is in the **reference** split when
``crc32(key) % 10 == 0`` (about 10 %), and in the **train** split otherwise. The key is the
image's relative path for folders, and its index (as text) for ``.npz`` and builtin sources, so
adding files never moves an existing image between splits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from memekit.space import PRESETS, MemeSpec, resolve_spec
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write
from memekit.space.progress import progress_bar

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("all", "train", "reference")
BUILTIN_PREFIX = "builtin:"
BUILTIN_DEFAULT_COUNT = 4096
# part of every cache key: bump when decoding or resizing changes, so stale caches are not reused
LOADER_VERSION = 2


class DataError(MemekitError, ValueError):
    """A data source cannot be read."""


def cache_dir() -> Path:
    """memekit's cache folder: ``$MEMEKIT_CACHE`` or ``~/.cache/memekit``."""
    return Path(os.environ.get("MEMEKIT_CACHE", Path.home() / ".cache" / "memekit"))


def reference_mask(keys: list[str]) -> np.ndarray:
    """Boolean mask of the reference split: ``crc32(key) % 10 == 0``."""
    return np.array([zlib.crc32(k.encode()) % 10 == 0 for k in keys], dtype=bool)


# ---- built-in dead-leaves data -----------------------------------------------------------------
def dead_leaves(n: int, resolution: int, seed: int = 0, n_shapes: int = 120) -> np.ndarray:
    """``n`` dead-leaves images, uint8 (n, resolution, resolution, 3), deterministic in ``seed``.

    Each image draws ``n_shapes`` discs and axis-aligned rectangles back to front, sizes from
    p(r) ~ r^-3 on [0.02, 0.5] (scale invariance, hence a ~1/f^2 power spectrum), rendered at 2x
    and box-downsampled for anti-aliasing. Image i uses ``np.random.default_rng((seed, i))``, so
    the first k images do not depend on n.
    """
    size = 2 * resolution
    coords = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    r_min, r_max = 0.02, 0.5
    for i in range(n):
        rng = np.random.default_rng((seed, i))
        canvas = np.empty((size, size, 3), dtype=np.float32)
        canvas[:] = rng.uniform(0, 1, 3)
        u = rng.uniform(0, 1, n_shapes)
        # inverse CDF of p(r) ~ r^-3 on [r_min, r_max]
        radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
        centres = rng.uniform(-0.1, 1.1, (n_shapes, 2))
        colours = rng.uniform(0, 1, (n_shapes, 3)).astype(np.float32)
        is_disc = rng.uniform(0, 1, n_shapes) < 0.5
        aspect = rng.uniform(0.5, 2.0, n_shapes)
        for k in range(n_shapes):
            cy, cx, r = centres[k, 0], centres[k, 1], radii[k]
            if is_disc[k]:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            else:
                mask = (np.abs(yy - cy) < r * aspect[k] / 2) & (np.abs(xx - cx) < r / aspect[k] / 2)
            canvas[mask] = colours[k]
        small = canvas.reshape(resolution, 2, resolution, 2, 3).mean(axis=(1, 3))
        out[i] = np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


# ---- image decoding ---------------------------------------------------------------------------
def _fit(img, resolution: int) -> np.ndarray:
    """PIL image -> center-cropped, anti-aliased resized uint8 (r, r, 3).

    The square is cropped before resizing: resizing with a crop box (as ``ImageOps.fit`` does)
    lets the filter read pixels outside the crop, which bleed into the border columns.
    """
    from PIL import Image

    img = img.convert("RGB")
    width, height = img.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _read_file(path: Path, resolution: int) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return _fit(img, resolution)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by relative path."""
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _load_folder(folder: Path, resolution: int, progress: bool) -> tuple[np.ndarray, list[str]]:
    files = list_image_files(folder)
    if not files:
        raise DataError(f"no .jpg/.jpeg/.png/.webp images found under {str(folder)!r}: point to a folder of images")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(progress_bar(pool.map(lambda p: _read_file(p, resolution), files), progress=progress,
                                    total=len(files), desc=f"reading {folder.name}", unit="img"))
    keys = [p.relative_to(folder).as_posix() for p in files]
    good = [i for i, im in enumerate(decoded) if im is not None]
    skipped = len(files) - len(good)
    if skipped:
        log.warning("skipped %d unreadable image file(s) under %s", skipped, folder)
    if not good:
        raise DataError(f"none of the {len(files)} image files under {str(folder)!r} could be read")
    return np.stack([decoded[i] for i in good]), [keys[i] for i in good]


def _load_npz(path: Path, resolution: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files and "latents" in data.files:
                raise DataError(f"{str(path)!r} is a latent data set: this step needs images (give the image "
                                "folder the latents were encoded from)")
            if "images" not in data.files:
                raise DataError(f"{str(path)!r} has no 'images' array (found: {', '.join(data.files) or 'nothing'})")
            images = data["images"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        # empty files raise EOFError, truncated or non-zip files BadZipFile
        raise DataError(f"cannot read {str(path)!r} as .npz: {type(err).__name__}: {err}") from None
    return _normalise_array(images, resolution, str(path))


def _normalise_array(images: np.ndarray, resolution: int, where: str) -> np.ndarray:
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"{where}: 'images' must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if images.shape[-1] not in (1, 3):
        raise DataError(f"{where}: images need 1 or 3 channels, got shape {images.shape}")
    if images.dtype != np.uint8:
        if (not np.issubdtype(images.dtype, np.floating) or not np.isfinite(images).all()
                or images.min() < 0 or images.max() > 1):
            raise DataError(f"{where}: images must be uint8, or float in [0, 1] (got {images.dtype})")
        images = np.clip(images * 255 + 0.5, 0, 255).astype(np.uint8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1:3] != (resolution, resolution):
        from PIL import Image

        images = np.stack([_fit(Image.fromarray(im), resolution) for im in images])
    return np.ascontiguousarray(images)


# ---- public API ---------------------------------------------------------------------------------
def parse_builtin(source: str) -> tuple[str, int]:
    """``builtin:shapes[:N]`` -> ("shapes", N)."""
    parts = source[len(BUILTIN_PREFIX):].split(":")
    if parts[0] != "shapes" or len(parts) > 2:
        raise DataError(f"unknown built-in source {source!r}: use builtin:shapes or builtin:shapes:N")
    count = BUILTIN_DEFAULT_COUNT
    if len(parts) == 2:
        if not parts[1].isdigit() or int(parts[1]) < 1:
            raise DataError(f"bad image count in {source!r}: use builtin:shapes:N with N >= 1")
        count = int(parts[1])
    return parts[0], count


def check_data_source(source: str) -> None:
    """Fail early, with one line, for a source that cannot be loaded (before any work starts)."""
    if source.startswith(BUILTIN_PREFIX):
        parse_builtin(source)
    elif not Path(source).exists():
        raise DataError(f"data source {source!r} does not exist: give an image folder, an .npz or builtin:shapes")


def source_fingerprint(source: str) -> str:
    """A short hash that changes when the source's content may have changed."""
    h = hashlib.sha1(f"loader-v{LOADER_VERSION}\n".encode())
    if source.startswith(BUILTIN_PREFIX):
        name, count = parse_builtin(source)
        h.update(f"{name}:{count}:v1".encode())
    else:
        path = Path(source).resolve()
        if path.is_dir():
            for p in list_image_files(path):
                st = p.stat()
                h.update(f"{p.relative_to(path).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        else:
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _load_uncached(source: str, resolution: int, progress: bool) -> tuple[np.ndarray, list[str]]:
    if source.startswith(BUILTIN_PREFIX):
        _, count = parse_builtin(source)
        return dead_leaves(count, resolution), [str(i) for i in range(count)]
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source {source!r} does not exist: give an image folder, an .npz or builtin:shapes")
    if path.is_dir():
        return _load_folder(path, resolution, progress)
    if path.suffix.lower() == ".npz":
        images = _load_npz(path, resolution)
        return images, [str(i) for i in range(len(images))]
    raise DataError(f"data source {source!r} is neither a folder nor an .npz file")


def load_images(source: str, resolution: int, limit: int | None = None, split: str = "all",
                progress: bool = True, use_cache: bool = True) -> np.ndarray:
    """Images of ``source`` at ``resolution``: uint8 (N, r, r, 3), RGB, in source order.

    ``split`` is ``all``, ``train`` or ``reference`` (see the module docstring); ``limit`` keeps
    the first ``limit`` images of the split.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if not isinstance(resolution, int) or resolution < 1:
        raise DataError(f"resolution must be a positive integer, got {resolution!r}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    images, keys = _cached_load(source, resolution, progress, use_cache)
    if split != "all":
        mask = reference_mask(keys)
        images = images[mask if split == "reference" else ~mask]
        if len(images) == 0:
            raise DataError(f"the {split} split of {source!r} is empty: the source has too few images")
    return images[:limit] if limit is not None else images


def _cached_load(source: str, resolution: int, progress: bool, use_cache: bool) -> tuple[np.ndarray, list[str]]:
    if not source.startswith(BUILTIN_PREFIX) and not Path(source).exists():
        raise DataError(f"data source {source!r} does not exist: give an image folder, an .npz or builtin:shapes")
    if not use_cache:
        return _load_uncached(source, resolution, progress)
    path = cache_dir() / "data" / f"{source_fingerprint(source)}-{resolution}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["images"], [str(k) for k in data["keys"]]
        except (OSError, ValueError, KeyError, zlib.error):
            log.warning("ignoring unreadable data cache %s", path)
    images, keys = _load_uncached(source, resolution, progress)
    atomic_write(path, lambda f: np.savez(f, images=images, keys=np.array(keys)))
    return images, keys


def is_latent_source(source: str) -> bool:
    """Whether ``source`` is a latent data set (an ``.npz`` with a ``latents`` array)."""
    from .latents import is_latent_file

    return not source.startswith(BUILTIN_PREFIX) and is_latent_file(source)


class DataShape(NamedTuple):
    """What a source gives a model: ``channels`` per sample at ``side`` x ``side`` (``None`` for
    images, which load at any resolution); ``latent`` for latent data sets."""

    channels: int
    side: int | None
    latent: bool


def data_shape(source: str) -> DataShape:
    """The :class:`DataShape` of ``source`` (a latent file's header is read, not its latents)."""
    if is_latent_source(source):
        from .latents import read_latent_header

        header = read_latent_header(source)
        return DataShape(header.channels, header.side, True)
    return DataShape(3, None, False)


def check_data_for_spec(source: str, channels: int, resolution: int) -> None:
    """One-line :class:`DataError` when experts that see ``channels`` channels at ``resolution`` px
    cannot train on ``source``."""
    shape = data_shape(source)
    if shape.latent and (shape.channels, shape.side) != (channels, resolution):
        raise DataError(f"the spec's experts see {channels} channel(s) at {resolution} px but {source} holds "
                        f"{shape.channels} x {shape.side} x {shape.side} latents: use a spec with image_channels "
                        f"{shape.channels} at resolution {shape.side} (preset names are adapted to the data)")
    if not shape.latent and channels != 3:
        raise DataError(f"the spec's experts see {channels} channel(s) but {source} holds RGB images: use a spec "
                        "with image_channels 3, or a latent file made by memekit encode")


def spec_for_data(name_or_path: str, source: str, resolution: int | None = None) -> MemeSpec:
    """The spec (preset name or JSON) that trains on ``source``: a preset is built for the data (at
    ``resolution``, default 32 px, for images; at the latents' size and channel count for a latent
    data set), a spec JSON must already fit it (:func:`check_data_for_spec`; one-line error)."""
    shape = data_shape(source)
    if shape.latent and resolution is not None and resolution != shape.side:
        raise DataError(f"{source} holds {shape.channels} x {shape.side} x {shape.side} latents: --resolution must "
                        f"be {shape.side} (or left out)")
    if name_or_path in PRESETS:
        spec = resolve_spec(name_or_path, shape.side if shape.latent else resolution)
        return spec.with_image_channels(shape.channels) if shape.latent else spec
    spec = resolve_spec(name_or_path, resolution)
    expert = spec.experts[0]
    check_data_for_spec(source, expert.image_channels, expert.resolution)
    return spec


def load_data(source: str, resolution: int, limit: int | None = None, split: str = "all",
              progress: bool = True) -> np.ndarray:
    """What a model trains on: :func:`load_images` (uint8 ``(N, r, r, 3)``), or for a latent data set
    its latents normalised to unit scale, float32 ``(N, C, r, r)`` (``r`` must be their side)."""
    if not is_latent_source(source):
        return load_images(source, resolution, limit=limit, split=split, progress=progress)
    from .latents import load_latents

    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    latents, header = load_latents(source, split, limit)
    if header.side != resolution:
        raise DataError(f"{source} holds {header.channels} x {header.side} x {header.side} latents, not "
                        f"{resolution} px data: use resolution {header.side}")
    return latents


def sample_side(batch: np.ndarray | torch.Tensor) -> int:
    """The side of uint8 ``(N, r, r, C)`` images or of float ``(N, C, r, r)`` model inputs."""
    return int(batch.shape[1] if batch.dtype in (np.uint8, torch.uint8) else batch.shape[-1])


def to_model_input(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A batch of :func:`load_data`'s output as the model sees it: uint8 images -> float32
    ``(N, C, H, W)`` in [-1, 1] (:func:`to_model_range`); float latents (already NCHW, unit scale)
    -> float32 unchanged."""
    if batch.dtype in (np.uint8, torch.uint8):
        return to_model_range(batch)
    return torch.as_tensor(batch).float()


# ---- image files by key (memekit encode) ------------------------------------------------------------
def source_keys(source: str) -> list[str]:
    """The keys of ``source``'s images in source order (paths for folders, indices otherwise), without
    decoding folder images."""
    check_data_source(source)
    if source.startswith(BUILTIN_PREFIX):
        return [str(i) for i in range(parse_builtin(source)[1])]
    path = Path(source)
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise DataError(f"no .jpg/.jpeg/.png/.webp images found under {source!r}: point to a folder of images")
        return [p.relative_to(path).as_posix() for p in files]
    return [str(i) for i in range(len(_load_npz(path, 1)))]


def read_images(source: str, keys: list[str], resolution: int) -> tuple[np.ndarray, list[str]]:
    """The images of ``keys`` (from :func:`source_keys`) at ``resolution``, uint8 ``(n, r, r, 3)``, and
    the keys that were read (unreadable files are skipped and logged)."""
    path = Path(source)
    if source.startswith(BUILTIN_PREFIX) or not path.is_dir():
        images = load_images(source, resolution, progress=False)
        return images[[int(k) for k in keys]], list(keys)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda k: _read_file(path / k, resolution), keys))
    good = [i for i, im in enumerate(decoded) if im is not None]
    if len(good) < len(keys):
        log.warning("skipped %d unreadable image file(s) under %s", len(keys) - len(good), path)
    empty = np.zeros((0, resolution, resolution, 3), dtype=np.uint8)
    return (np.stack([decoded[i] for i in good]) if good else empty), [keys[i] for i in good]


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1], the range the diffusion model sees."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C) (clipped, rounded)."""
    return x.detach().float().add(1.0).mul(127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
