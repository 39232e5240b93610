"""``memekit fid`` on image sets: printed FID / KID / LSD lines naming protocol and weights, --json,
--save-stats, --dry-run, and one-line errors with exit code 2. Inception is replaced by 2 x 2
pooled pixels (fid_helpers.PooledPixels) wherever images go through it, so every number has an
independent closed form here and the tests take milliseconds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fid_helpers import (
    hide_fid_helper,
    mmd2_direct,
    pooled_pixels,
    random_stats,
    use_pooled_pixels,
    write_folder,
)

from memekit.analysis import fid as fidlib
from memekit.analysis.fid import InceptionStats, load_statistics, save_statistics


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMEKIT_CACHE", str(tmp_path / "memekit-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(fidlib.WEIGHTS_ENV, raising=False)


@pytest.fixture
def fake_inception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_pooled_pixels(tmp_path, monkeypatch)


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch):
    """memekit's CLI main."""
    from memekit.search import cli

    return cli.main


def test_cli_fid_of_statistics_files(tmp_path: Path, cli_main, capsys: pytest.CaptureFixture) -> None:
    mu1, sigma = random_stats(8, seed=9)
    mu2 = mu1 + 0.5
    save_statistics(tmp_path / "a.npz", InceptionStats(mu1, sigma, 10, "", 0, "w"))
    save_statistics(tmp_path / "b.npz", InceptionStats(mu2, sigma, 12, "", 0, "w"))
    code = cli_main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"),
                     "--save-stats", str(tmp_path / "copy.npz")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    # equal covariances: |d mu|^2; statistics files record no protocol here, and give no KID or LSD
    assert out[0] == f"FID {8 * 0.25:.3f} (n=10 vs 12; protocol not recorded; weights: w)"
    assert any(line.startswith("KID not computed: A holds statistics") for line in out)
    assert any(line.startswith("LSD not computed") for line in out)
    assert not any(re.match(r"(KID|LSD) -?\d", line) for line in out)
    np.testing.assert_array_equal(load_statistics(tmp_path / "copy.npz").mu, mu2)


@pytest.mark.parametrize("case", ["missing folder", "unreadable npz", "no weights"])
def test_cli_errors_are_one_line_exit_2(tmp_path: Path, cli_main, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    write_folder(tmp_path / "imgs", 2, seed=0, noise=10)
    if case == "missing folder":
        argv = ["fid", str(tmp_path / "imgs"), str(tmp_path / "missing")]
    elif case == "unreadable npz":
        (tmp_path / "bad.npz").write_bytes(b"garbage")
        argv = ["fid", str(tmp_path / "imgs"), str(tmp_path / "bad.npz")]
    else:
        hide_fid_helper(monkeypatch)
        argv = ["fid", str(tmp_path / "imgs"), str(tmp_path / "imgs")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("memekit: error: ") and err.count("\n") == 1


def test_cli_fid_kid_lsd_of_folders(tmp_path: Path, cli_main, capsys: pytest.CaptureFixture,
                                    fake_inception: Path) -> None:
    """Two folders of 6 images: FID, KID (subsets of all 6 rows: the plain double sums) and LSD,
    each line naming its protocol and weights; --json holds the same numbers."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    from memekit.analysis.spectra import log_spectral_distance

    images_a = write_folder(tmp_path / "a", 6, seed=0, noise=20)
    images_b = write_folder(tmp_path / "b", 6, seed=1, noise=60)
    code = cli_main(["fid", str(tmp_path / "a"), str(tmp_path / "b"), "--inception-weights", str(fake_inception),
                     "--device", "cpu", "--kid-subsets", "3", "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    fa, fb = pooled_pixels(images_a), pooled_pixels(images_b)
    expected_fid = calculate_frechet_distance(fa.mean(0), np.cov(fa, rowvar=False),
                                              fb.mean(0), np.cov(fb, rowvar=False))
    expected_lsd = log_spectral_distance(images_a, images_b)
    where = f"(n=6 vs 6; protocol pytorch-fid (bilinear 299); weights: user file {fake_inception})"
    assert out[0] == f"FID {expected_fid:.3f} {where}"
    assert out[1].startswith("KID ") and out[1].endswith(f"over 3 subsets of 6 {where}")
    assert out[2].startswith(f"LSD {expected_lsd.lsd:.3f} dB (low {expected_lsd.low:+.3f}")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["fid"] == pytest.approx(expected_fid, rel=1e-4)
    assert data["kid_mean"] == pytest.approx(mmd2_direct(fa, fb), rel=1e-4, abs=1e-9)
    assert data["kid_std"] == pytest.approx(0, abs=1e-12)  # every subset holds all rows
    assert data["lsd"] == pytest.approx(expected_lsd.lsd) and data["kid_subset_size"] == 6
    assert data["protocol"] == "pytorch-fid" and data["notes"] == []


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "2"], "--seeds applies only when A is a run"),
    (["--steps", "5"], "--steps applies only when A is a run"),
    (["--protocol", "tf"], "invalid choice"),
    (["--kid-subsets", "0"], "expected a positive integer"),
    (["--save-stats", "out.txt"], "must end in .npz"),
])
def test_cli_usage_errors_are_one_line_exit_2(tmp_path: Path, cli_main, capsys: pytest.CaptureFixture,
                                              extra: list[str], message: str) -> None:
    write_folder(tmp_path / "imgs", 2, seed=0, noise=10)
    assert cli_main(["fid", str(tmp_path / "imgs"), str(tmp_path / "imgs"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_cli_dry_run_names_protocol_and_kid_settings(tmp_path: Path, cli_main, capsys: pytest.CaptureFixture) -> None:
    write_folder(tmp_path / "imgs", 2, seed=0, noise=10)
    code = cli_main(["fid", str(tmp_path / "imgs"), "builtin:shapes", "--protocol", "clean", "--kid-subset-size",
                     "50", "--dry-run"])
    config = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (config["mode"], config["protocol"], config["protocol_label"]) == ("image sets", "clean",
                                                                              "clean (PIL bicubic 299)")
    assert (config["kid_subsets"], config["kid_subset_size"], config["split"]) == (100, 50, "all")
    assert not (tmp_path / "memekit-cache" / "fid").exists()  # a dry run converts and computes nothing
