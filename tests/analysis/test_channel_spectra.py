"""Per-channel spectra (latents have C channels with their own spectra): closed forms for white
noise, power laws and flat spectra."""

from __future__ import annotations

import numpy as np
import pytest

from memekit.analysis.spectra import (
    SpectralProfile,
    SpectrumError,
    channel_power_spectrum,
    data_power_spectrum,
    radial_bins,
    spectral_profile,
    spectral_slope,
)


def test_white_noise_has_its_variance_at_every_frequency_per_channel() -> None:
    """Orthonormal FFT: white noise of variance s^2 has E|X(k)|^2 = s^2 at every k != 0."""
    rng = np.random.default_rng(0)
    sigma = np.array([0.5, 1.0, 2.0, 3.0])
    x = (rng.standard_normal((300, 4, 16, 16)) * sigma[:, None, None]).astype(np.float32)
    power = channel_power_spectrum(x)
    assert power.shape == (4, 8)
    assert np.allclose(power, (sigma**2)[:, None], rtol=0.15)
    # the channel mean is the spectrum every other memekit function uses
    assert np.allclose(power.mean(axis=0), data_power_spectrum(x), rtol=1e-6)  # float32 sums in another order
    profile = spectral_profile(x, np.linspace(0.99, 0.01, 10))
    assert np.allclose(profile.channel_power, power) and np.allclose(profile.data_power, power.mean(axis=0))


def test_spectral_slope_of_a_power_law() -> None:
    f = radial_bins(64).frequency
    assert spectral_slope(3.0 * f**-2.0, f) == pytest.approx(2.0)
    assert spectral_slope(np.full_like(f, 0.7), f) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(SpectrumError, match="positive power"):
        spectral_slope(np.zeros_like(f), f)


def test_channel_crossover_of_flat_spectra() -> None:
    """A flat P_c = p gives SNR = ab p / (1 - ab) at every f: f_c = f_max when it is >= 1, else 0."""
    bins = radial_bins(8)
    channels = np.array([np.full(4, 4.0), np.full(4, 0.25)])
    profile = SpectralProfile(bins.frequency, bins.counts, channels.mean(axis=0), np.array([0.5, 0.1]), 1, 8,
                              channel_power=channels)
    assert np.array_equal(profile.channel_crossover(), [[bins.frequency[-1], 0.0], [0.0, 0.0]])


def test_comparison_on_cycles_per_image() -> None:
    """Pixels at R = 16 and latents at R = 4 share one axis: ring k of an R grid is k cycles per image."""
    from memekit.analysis.plots import plot_spectra_comparison
    from memekit.analysis.reports import comparison_frames

    alpha_bar = np.array([0.9, 0.5, 0.1])
    profiles = {}
    for name, size, level in (("pixels", 16, 4.0), ("latents", 4, 0.25)):
        bins = radial_bins(size)
        flat = np.full(len(bins.frequency), level)
        profiles[name] = SpectralProfile(bins.frequency, bins.counts, flat, alpha_bar, 1, size,
                                         channel_power=np.stack([flat / 2, flat * 1.5]))
    power, crossover = comparison_frames(profiles)
    assert np.allclose(power[power["name"] == "pixels"]["k"], np.arange(1, 9))
    assert np.allclose(power[power["name"] == "latents"]["k"], [1, 2])
    assert np.allclose(power["channel_max"] / power["channel_min"], 3.0)
    # flat spectra cross everywhere at once: SNR = ab p / (1 - ab) >= 1 -> Nyquist, else 0
    expected = {"pixels": [1.0, 1.0, 0.0], "latents": [1.0, 0.0, 0.0]}
    for name, fractions in expected.items():
        assert np.allclose(crossover[crossover["name"] == name]["fraction_of_nyquist"], fractions)
    fig = plot_spectra_comparison(power, crossover, {"pixels": (0, 1, 3), "latents": (0, 2, 3)})
    assert len(fig.axes) == 2
