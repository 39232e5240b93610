"""Log-spectral distance: zero for one spectrum, 20 log10 c for images scaled by c, the per-band
signs of a blur, the aggregation against per-image numpy RAPSDs, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from memekit.analysis.spectra import (
    BAND_EDGES,
    SpectrumError,
    log_spectral_distance,
    log_spectral_distance_of_spectra,
    radial_bins,
    rapsd,
)


def _images(n: int, size: int, seed: int, low: int = 0, high: int = 256, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, size, size, channels), dtype=np.uint8)


def test_lsd_of_one_set_against_itself_is_zero() -> None:
    images = _images(4, 16, seed=0)
    result = log_spectral_distance(images, images.copy())
    assert result == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("size", [16, 15])
def test_lsd_of_a_scaled_set_is_20_log10_c_in_every_band(size: int) -> None:
    """uint8 v in [86, 169] -> 3 v - 255 is exactly 3 x (v - 127.5) + 127.5: the model-range image
    (v / 127.5 - 1) times 3, so every bin's power is 9 times larger: +20 log10 3 dB everywhere
    (to float32 precision: the spectra are computed from float32 images)."""
    images = _images(3, size, seed=1, low=86, high=170)
    scaled = (3 * images.astype(np.int64) - 255).astype(np.uint8)
    expected = 20 * np.log10(3)
    up, down = log_spectral_distance(scaled, images), log_spectral_distance(images, scaled)
    assert up.lsd == pytest.approx(expected, rel=1e-6) and down.lsd == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose([up.low, up.mid, up.high], expected, rtol=1e-6)
    np.testing.assert_allclose([down.low, down.mid, down.high], -expected, rtol=1e-6)


def test_lsd_matches_per_image_numpy_spectra() -> None:
    """The same number from rapsd (numpy, one image and channel at a time), averaged over images
    and channels, and the formulas written out here."""
    a, b = _images(3, 12, seed=2), _images(2, 12, seed=3, low=60, high=200)
    power = [rapsd(x.transpose(0, 3, 1, 2) / 127.5 - 1).mean(axis=(0, 1)) for x in (a, b)]  # (K,) each
    ratio = 10 * np.log10(power[0] / power[1])
    f = radial_bins(12).frequency
    result = log_spectral_distance(a, b)
    assert result.lsd == pytest.approx(np.sqrt(np.mean(ratio**2)), rel=1e-6)
    assert result.low == pytest.approx(ratio[f < BAND_EDGES[0]].mean(), rel=1e-6)
    assert result.mid == pytest.approx(ratio[(f >= BAND_EDGES[0]) & (f < BAND_EDGES[1])].mean(), rel=1e-6)
    assert result.high == pytest.approx(ratio[f >= BAND_EDGES[1]].mean(), rel=1e-6)


def test_a_blur_loses_power_in_the_high_band() -> None:
    """A 3-tap horizontal box blur has gain |(1 + 2 cos 2 pi f_x) / 3|^2 <= 1, close to 1 at low f
    and far below it at high f: the high band must be negative and much larger than the low one."""
    images = _images(8, 32, seed=4)
    x = images.astype(np.float64)
    blurred = np.round((np.roll(x, 1, axis=2) + x + np.roll(x, -1, axis=2)) / 3).astype(np.uint8)
    result = log_spectral_distance(blurred, images)
    assert result.high < -3 and abs(result.low) < 0.5 * abs(result.high) and result.mid < 0


def test_lsd_errors_are_one_line() -> None:
    images = _images(2, 16, seed=5)
    cases = [
        (lambda: log_spectral_distance(images, _images(2, 8, seed=6)), "one size"),
        (lambda: log_spectral_distance(images.astype(np.float32), images), "uint8"),
        (lambda: log_spectral_distance(np.full((2, 16, 16, 3), 7, np.uint8), images), "no power"),
        (lambda: log_spectral_distance_of_spectra(np.ones(3), np.ones(4), np.ones(3)), r"one \(K,\)"),
    ]
    for call, message in cases:
        with pytest.raises(SpectrumError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
