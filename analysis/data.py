"""The one image loader of memekit: folders, ``.npz`` files and the built-in ``builtin:shapes``.

Sources (``load_images(source, resolution)``):

- a folder, searched recursively for ``.jpg/.jpeg/.png/.webp`` files (sorted by relative path);
  unreadable files are skipped and counted in the log; no readable image is an error;
- a ``.npz`` file holding an ``images`` array, uint8 ``(N, H, W, C)`` or ``(N, C, H, W)`` with
  C in {1, 3}, or float in [0, 1];
- ``builtin:shapes`` or ``builtin:shapes:N``: N (default 4096) deterministic dead-leaves images
  (random overlapping coloured discs and rectangles with radii ~ r^-3, which gives the ~1/f^2
  power spectrum of natural images), rendered at any resolution, no download.
- ``builtin:few-shapes`` or ``builtin:few-shapes:N``: N (default 4096) deterministic images of three
  large flat-coloured discs and rectangles on a flat background (:func:`few_shapes`): what a CPU-sized
  model learns in minutes (``memekit quickstart``).

Every image is center-cropped to a square and resized with an anti-aliased bicubic filter to
``resolution``; the result is uint8 ``(N, resolution, resolution, 3)`` RGB. Converted arrays are
cached under ``$MEMEKIT_CACHE`` (default ``~/.cache/memekit``)/data, keyed by the source
fingerprint and the resolution.

**Images as the user sees them.** An image with transparency (RGBA, LA, or a palette or RGB image
with a transparent colour) is composited onto an opaque ``background`` (default mid grey
(128, 128, 128)), as a viewer shows it, before cropping: ``out = round((a c + (255 - a) b) / 255)``
per channel (:func:`composite`). ``convert("RGB")`` would instead keep whatever colour lies under
the transparent pixels, often black or white boxes around a sprite. Grey (one-channel) images are
repeated into RGB. Each load reports both counts in one line (to ``say``, else as a log warning):
"composited 2,429 images with transparency onto grey (128, 128, 128), converted 12 grey images to
RGB". Opaque RGB images decode exactly as before. For folders that may hold transparency (any
``.png`` or ``.webp``) the background is part of the source fingerprint, so the cache of one
background is never read for another (JPEG-only folders keep their fingerprint). A cache written
before the counts were stored in it is decoded again.

**Latent data sets** (``.npz`` files with a ``latents`` array, :mod:`memekit.analysis.latents`, made
by ``memekit encode``) are read by :func:`load_data`: float32 ``(N, C, H, W)`` latents normalised to
unit scale, at their own size. :func:`load_data` is what models train on (images or latents),
:func:`to_model_input` what they see (images in [-1, 1], latents as they are), and
:func:`check_data_for_spec` says in one line when a spec's channel count or size does not fit.

Splits are fixed and documented (:mod:`memekit.analysis.splits`): an image is in the **reference**
split when ``crc32(key) % 10 == 0`` (about 10 %), and in the **train** split otherwise. The key is the
image's relative path for folders, and its index (as text) for ``.npz`` and builtin sources, so
adding files never moves an existing image between splits.

This module never imports torch (the tensor conversions are in :mod:`memekit.analysis.pixels`, the
latent files in :mod:`memekit.analysis.latents`, imported by the functions that read them), so that
the command line reads the splits and the background colours without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from memekit.space import PRESETS, MemeSpec, resolve_spec
from memekit.space.files import atomic_write
from memekit.space.progress import progress_bar

# re-exported: the split rule and DataError (shared with latent files) and the pixel conversions live apart
from .pixels import sample_side as sample_side
from .pixels import to_model_input as to_model_input
from .pixels import to_model_range as to_model_range
from .pixels import to_uint8 as to_uint8
from .splits import SPLITS, DataError, reference_mask
from .threads import available_cores

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
BUILTIN_PREFIX = "builtin:"
BUILTIN_DEFAULT_COUNT = 4096
# part of every cache key: bump when decoding or resizing changes, so stale caches are not reused
LOADER_VERSION = 2
DEFAULT_BACKGROUND = (128, 128, 128)  # mid grey: what transparent pixels become
BACKGROUNDS = {"grey": DEFAULT_BACKGROUND, "gray": DEFAULT_BACKGROUND, "black": (0, 0, 0), "white": (255, 255, 255)}
TRANSPARENCY_SUFFIXES = (".png", ".webp")  # the formats of IMAGE_SUFFIXES that can hold transparency
# what decoding did to each image (stored in the cache as "kinds")
OPAQUE, COMPOSITED, GREY = 0, 1, 2
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def cache_dir() -> Path:
    """memekit's cache folder: ``$MEMEKIT_CACHE`` or ``~/.cache/memekit``."""
    return Path(os.environ.get("MEMEKIT_CACHE", Path.home() / ".cache" / "memekit"))


# ---- built-in shape data ----------------------------------------------------------------------
def _paint_shapes(rng: np.random.Generator, resolution: int, n_shapes: int,
                  radius_of: Callable[[np.ndarray], np.ndarray], centre_range: tuple[float, float]) -> np.ndarray:
    """One image: a flat background, then ``n_shapes`` flat discs and axis-aligned rectangles back to
    front (radius ``radius_of(u)`` for u ~ U(0, 1), centres uniform in ``centre_range``, aspect ratio
    of rectangles in [0.5, 2]), rendered at 2x and box-downsampled for anti-aliasing; uint8 (r, r, 3)."""
    size = 2 * resolution
    coords = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = rng.uniform(0, 1, 3)
    radii = radius_of(rng.uniform(0, 1, n_shapes))
    centres = rng.uniform(*centre_range, (n_shapes, 2))
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
    return np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)


def dead_leaves(n: int, resolution: int, seed: int = 0, n_shapes: int = 120) -> np.ndarray:
    """``n`` dead-leaves images, uint8 (n, resolution, resolution, 3), deterministic in ``seed``.

    Each image draws ``n_shapes`` discs and axis-aligned rectangles back to front, sizes from
    p(r) ~ r^-3 on [0.02, 0.5] (scale invariance, hence a ~1/f^2 power spectrum), rendered at 2x
    and box-downsampled for anti-aliasing. Image i uses ``np.random.default_rng((seed, i))``, so
    the first k images do not depend on n.
    """
    r_min, r_max = 0.02, 0.5

    def radius_of(u: np.ndarray) -> np.ndarray:  # inverse CDF of p(r) ~ r^-3 on [r_min, r_max]
        return (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5

    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = _paint_shapes(np.random.default_rng((seed, i)), resolution, n_shapes, radius_of, (-0.1, 1.1))
    return out


def few_shapes(n: int, resolution: int, seed: int = 0, n_shapes: int = 3, r_min: float = 0.15,
               r_max: float = 0.35) -> np.ndarray:
    """``n`` images of ``n_shapes`` large flat discs and rectangles on a flat background, uint8
    (n, resolution, resolution, 3), deterministic in ``seed`` (image i uses
    ``np.random.default_rng((seed, i, 1))``; the first k images do not depend on n).

    Radii are uniform on [``r_min``, ``r_max``] (fractions of the side) and centres uniform in
    [0.15, 0.85], so every shape is large and mostly inside the image: about 80 % of neighbouring
    pixels are equal and an image has about a dozen colours at 16 px, against 40 % and about 90
    for the dead leaves of :func:`dead_leaves`, whose small shapes make texture.
    """
    def radius_of(u: np.ndarray) -> np.ndarray:
        return r_min + u * (r_max - r_min)

    out = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = _paint_shapes(np.random.default_rng((seed, i, 1)), resolution, n_shapes, radius_of, (0.15, 0.85))
    return out


BUILTINS: dict[str, Callable[[int, int], np.ndarray]] = {"shapes": dead_leaves, "few-shapes": few_shapes}


# ---- transparency ------------------------------------------------------------------------------
def check_background(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """``background`` as an (r, g, b) tuple of ints in 0..255, else a one-line :class:`DataError`."""
    values = tuple(background) if isinstance(background, tuple | list) else ()
    if len(values) != 3 or not all(isinstance(v, int | np.integer) and 0 <= v <= 255 for v in values):
        raise DataError(f"background must be three integers in 0..255 (r, g, b), got {background!r}")
    return tuple(int(v) for v in values)


def parse_background(text: str) -> tuple[int, int, int]:
    """``--background``: grey, black, white, ``R,G,B`` or ``#RRGGBB`` -> (r, g, b)."""
    value = text.strip().lower()
    if value in BACKGROUNDS:
        return BACKGROUNDS[value]
    try:
        if value.startswith("#") and len(value) == 7:
            return check_background(tuple(int(value[i:i + 2], 16) for i in (1, 3, 5)))
        return check_background(tuple(int(v) for v in value.split(",")))
    except ValueError:
        pass
    raise DataError(f"background {text!r} is not a colour: use grey, black, white, R,G,B (0-255) or #RRGGBB")


def background_name(background: tuple[int, int, int]) -> str:
    """``grey (128, 128, 128)``, ``black (0, 0, 0)``, ... or just ``(r, g, b)``."""
    rgb = check_background(background)
    name = next((n for n, v in BACKGROUNDS.items() if v == rgb), "")
    return f"{name} {rgb}" if name else str(rgb)


def composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """uint8 ``(..., 4)`` RGBA (straight alpha) over an opaque ``background`` -> uint8 ``(..., 3)``.

    Porter-Duff "over" onto an opaque backdrop in the stored (sRGB) values, as image viewers show
    it: ``out = round((a c + (255 - a) b) / 255)`` per channel, exact in integers (the numerator
    over 255 never ends in .5).
    """
    c = rgba[..., :3].astype(np.int32)
    a = rgba[..., 3:4].astype(np.int32)
    b = np.asarray(check_background(background), dtype=np.int32)
    return ((a * c + (255 - a) * b + 127) // 255).astype(np.uint8)


def _to_rgb(img, background: tuple[int, int, int]):  # noqa: ANN001, ANN202 - PIL images
    """(RGB PIL image, kind): an image with transparency composited onto ``background``
    (:data:`COMPOSITED`), every other image by ``convert("RGB")`` (:data:`GREY` or :data:`OPAQUE`)."""
    from PIL import Image

    kind = GREY if img.mode in GREY_MODES else OPAQUE
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))
        if rgba[..., 3].min() < 255:
            return Image.fromarray(composite(rgba, background)), COMPOSITED
        return Image.fromarray(np.ascontiguousarray(rgba[..., :3])), kind  # opaque after all: its colours
    return img.convert("RGB"), kind


# ---- image decoding ---------------------------------------------------------------------------
def _fit(img, resolution: int, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> tuple[np.ndarray, int]:
    """PIL image -> (center-cropped, anti-aliased resized uint8 (r, r, 3), kind of :func:`_to_rgb`).

    The square is cropped before resizing: resizing with a crop box (as ``ImageOps.fit`` does)
    lets the filter read pixels outside the crop, which bleed into the border columns.
    """
    from PIL import Image

    img, kind = _to_rgb(img, background)
    width, height = img.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8), kind


def _read_file(path: Path, resolution: int, background: tuple[int, int, int]) -> tuple[np.ndarray, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return _fit(img, resolution, background)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def _decode(paths: list[Path], resolution: int, background: tuple[int, int, int],
            progress: bool = False, desc: str = "") -> list[tuple[np.ndarray, int] | None]:
    """:func:`_read_file` of every path, in order, on a few threads (PIL decodes outside the GIL)."""
    with ThreadPoolExecutor(max_workers=min(8, available_cores())) as pool:
        decoded = pool.map(lambda p: _read_file(p, resolution, background), paths)
        return list(progress_bar(decoded, progress=progress, total=len(paths), desc=desc, unit="img"))


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by relative path."""
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


class Loaded(NamedTuple):
    """Decoded images uint8 ``(N, r, r, 3)``, their split keys, and what decoding did to each
    (``kinds``: :data:`OPAQUE`, :data:`COMPOSITED` or :data:`GREY`)."""

    images: np.ndarray
    keys: list[str]
    kinds: np.ndarray


def _load_folder(folder: Path, resolution: int, progress: bool, background: tuple[int, int, int]) -> Loaded:
    files = list_image_files(folder)
    if not files:
        raise DataError(f"no .jpg/.jpeg/.png/.webp images found under {str(folder)!r}: point to a folder of images")
    decoded = _decode(files, resolution, background, progress, desc=f"reading {folder.name}")
    keys = [p.relative_to(folder).as_posix() for p in files]
    good = [i for i, im in enumerate(decoded) if im is not None]
    skipped = len(files) - len(good)
    if skipped:
        log.warning("skipped %d unreadable image file(s) under %s", skipped, folder)
    if not good:
        raise DataError(f"none of the {len(files)} image files under {str(folder)!r} could be read")
    return Loaded(np.stack([decoded[i][0] for i in good]), [keys[i] for i in good],
                  np.array([decoded[i][1] for i in good], dtype=np.uint8))


def _load_npz(path: Path, resolution: int) -> tuple[np.ndarray, bool]:
    """The ``images`` array of an ``.npz`` at ``resolution`` and whether it was grey (one channel)."""
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
    grey = images.shape[-1] == 1
    if images.dtype != np.uint8:
        if (not np.issubdtype(images.dtype, np.floating) or not np.isfinite(images).all()
                or images.min() < 0 or images.max() > 1):
            raise DataError(f"{where}: images must be uint8, or float in [0, 1] (got {images.dtype})")
        images = np.clip(images * 255 + 0.5, 0, 255).astype(np.uint8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1:3] != (resolution, resolution):
        from PIL import Image

        images = np.stack([_fit(Image.fromarray(im), resolution)[0] for im in images])
    return np.ascontiguousarray(images), grey


# ---- public API ---------------------------------------------------------------------------------
def parse_builtin(source: str) -> tuple[str, int]:
    """``builtin:NAME[:N]`` -> (NAME, N) for NAME in :data:`BUILTINS` (``shapes``, ``few-shapes``)."""
    parts = source[len(BUILTIN_PREFIX):].split(":")
    if parts[0] not in BUILTINS or len(parts) > 2:
        raise DataError(f"unknown built-in source {source!r}: use builtin:shapes[:N] or builtin:few-shapes[:N]")
    count = BUILTIN_DEFAULT_COUNT
    if len(parts) == 2:
        if not parts[1].isdigit() or int(parts[1]) < 1:
            raise DataError(f"bad image count in {source!r}: use builtin:{parts[0]}:N with N >= 1")
        count = int(parts[1])
    return parts[0], count


def check_data_source(source: str) -> None:
    """Fail early, with one line, for a source that cannot be loaded (before any work starts)."""
    if source.startswith(BUILTIN_PREFIX):
        parse_builtin(source)
    elif not Path(source).exists():
        raise DataError(f"data source {source!r} does not exist: give an image folder, an .npz or builtin:shapes")


def source_fingerprint(source: str, background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> str:
    """A short hash that changes when the source's content may have changed, or the ``background`` of a
    folder that may hold transparency (one with ``.png`` or ``.webp`` files)."""
    h = hashlib.sha1(f"loader-v{LOADER_VERSION}\n".encode())
    if source.startswith(BUILTIN_PREFIX):
        name, count = parse_builtin(source)
        h.update(f"{name}:{count}:v1".encode())
    else:
        path = Path(source).resolve()
        if path.is_dir():
            files = list_image_files(path)
            for p in files:
                st = p.stat()
                h.update(f"{p.relative_to(path).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            if any(p.suffix.lower() in TRANSPARENCY_SUFFIXES for p in files):  # JPEG-only keys stay as they were
                h.update("composited onto {} {} {}\n".format(*check_background(background)).encode())
        else:
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _load_uncached(source: str, resolution: int, progress: bool, background: tuple[int, int, int]) -> Loaded:
    if source.startswith(BUILTIN_PREFIX):
        name, count = parse_builtin(source)
        return Loaded(BUILTINS[name](count, resolution), [str(i) for i in range(count)], np.zeros(count, np.uint8))
    path = Path(source)
    if not path.exists():
        raise DataError(f"data source {source!r} does not exist: give an image folder, an .npz or builtin:shapes")
    if path.is_dir():
        return _load_folder(path, resolution, progress, background)
    if path.suffix.lower() == ".npz":
        images, grey = _load_npz(path, resolution)
        return Loaded(images, [str(i) for i in range(len(images))], np.full(len(images), GREY if grey else OPAQUE,
                                                                             np.uint8))
    raise DataError(f"data source {source!r} is neither a folder nor an .npz file")


def load_images(source: str, resolution: int, limit: int | None = None, split: str = "all",
                progress: bool = True, use_cache: bool = True, background: tuple[int, int, int] = DEFAULT_BACKGROUND,
                say: Callable[[str], None] | None = None) -> np.ndarray:
    """Images of ``source`` at ``resolution``: uint8 (N, r, r, 3), RGB, in source order.

    ``split`` is ``all``, ``train`` or ``reference`` (see the module docstring); ``limit`` keeps
    the first ``limit`` images of the split. Transparent images are composited onto ``background``
    (r, g, b); what was composited or converted from grey is said once, to ``say`` or as a log warning.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if not isinstance(resolution, int) or resolution < 1:
        raise DataError(f"resolution must be a positive integer, got {resolution!r}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    background = check_background(background)
    images, keys, kinds = _cached_load(source, resolution, progress, use_cache, background)
    if split != "all":
        mask = reference_mask(keys)
        images, kinds = images[mask if split == "reference" else ~mask], kinds[mask if split == "reference" else ~mask]
        if len(images) == 0:
            raise DataError(f"the {split} split of {source!r} is empty: the source has too few images")
    if limit is not None:
        images, kinds = images[:limit], kinds[:limit]
    where = source if split == "all" else f"{source} ({split} split)"
    _report(kinds, background, where, say)
    return images


def conversion_note(kinds: np.ndarray, background: tuple[int, int, int]) -> str | None:
    """"composited N images with transparency onto grey (128, 128, 128), converted M grey images to
    RGB" for the ``kinds`` of loaded images; None when every image was opaque RGB."""
    composited, grey = int(np.sum(kinds == COMPOSITED)), int(np.sum(kinds == GREY))
    parts = []
    if composited:
        parts.append(f"composited {composited:,} image{'s' * (composited != 1)} with transparency onto "
                     f"{background_name(background)}")
    if grey:
        parts.append(f"converted {grey:,} grey image{'s' * (grey != 1)} to RGB")
    return ", ".join(parts) or None


def _report(kinds: np.ndarray, background: tuple[int, int, int], where: str,
            say: Callable[[str], None] | None) -> None:
    note = conversion_note(kinds, background)
    if note is None:
        return
    if say is not None:
        say(f"{where}: {note}")
    else:
        log.warning("%s: %s", where, note)


def _cached_load(source: str, resolution: int, progress: bool, use_cache: bool,
                 background: tuple[int, int, int]) -> Loaded:
    if not source.startswith(BUILTIN_PREFIX) and not Path(source).exists():
        raise DataError(f"data source {source!r} does not exist: give an image folder, an .npz or builtin:shapes")
    if not use_cache:
        return _load_uncached(source, resolution, progress, background)
    path = cache_dir() / "data" / f"{source_fingerprint(source, background)}-{resolution}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if "kinds" in data.files:  # caches written before kinds were counted are decoded again
                    return Loaded(data["images"], [str(k) for k in data["keys"]], data["kinds"])
        except (OSError, ValueError, KeyError, zlib.error):
            log.warning("ignoring unreadable data cache %s", path)
    loaded = _load_uncached(source, resolution, progress, background)
    atomic_write(path, lambda f: np.savez(f, images=loaded.images, keys=np.array(loaded.keys), kinds=loaded.kinds))
    return loaded


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
              progress: bool = True, background: tuple[int, int, int] = DEFAULT_BACKGROUND,
              say: Callable[[str], None] | None = None) -> np.ndarray:
    """What a model trains on: :func:`load_images` (uint8 ``(N, r, r, 3)``; transparency composited
    onto ``background``, said to ``say``), or for a latent data set its latents normalised to unit
    scale, float32 ``(N, C, r, r)`` (``r`` must be their side)."""
    if not is_latent_source(source):
        return load_images(source, resolution, limit=limit, split=split, progress=progress, background=background,
                           say=say)
    from .latents import load_latents

    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    latents, header = load_latents(source, split, limit)
    if header.side != resolution:
        raise DataError(f"{source} holds {header.channels} x {header.side} x {header.side} latents, not "
                        f"{resolution} px data: use resolution {header.side}")
    return latents


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
    return [str(i) for i in range(len(_load_npz(path, 1)[0]))]


def read_images(source: str, keys: list[str], resolution: int, background: tuple[int, int, int] = DEFAULT_BACKGROUND,
                say: Callable[[str], None] | None = None) -> tuple[np.ndarray, list[str]]:
    """The images of ``keys`` (from :func:`source_keys`) at ``resolution``, uint8 ``(n, r, r, 3)``, and
    the keys that were read (unreadable files are skipped and logged; transparency is composited onto
    ``background`` and reported as by :func:`load_images`)."""
    path = Path(source)
    background = check_background(background)
    if source.startswith(BUILTIN_PREFIX) or not path.is_dir():
        images = load_images(source, resolution, progress=False, background=background, say=say)
        return images[[int(k) for k in keys]], list(keys)
    decoded = _decode([path / k for k in keys], resolution, background)
    good = [i for i, im in enumerate(decoded) if im is not None]
    if len(good) < len(keys):
        log.warning("skipped %d unreadable image file(s) under %s", len(keys) - len(good), path)
    _report(np.array([decoded[i][1] for i in good], dtype=np.uint8), background, source, say)
    empty = np.zeros((0, resolution, resolution, 3), dtype=np.uint8)
    return (np.stack([decoded[i][0] for i in good]) if good else empty), [keys[i] for i in good]
