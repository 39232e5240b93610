"""Spectra against closed forms: white noise, sinusoids, Parseval, the noisy-input identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memekit.analysis.data import dead_leaves, to_model_range
from memekit.analysis.spectra import (
    BAND_EDGES,
    SpectrumError,
    band_energy_fractions,
    crossover_frequency,
    data_power_spectrum,
    expected_noisy_spectrum,
    monte_carlo_noisy_spectrum,
    radial_bins,
    rapsd,
    rapsd_torch,
    snr,
    spectral_profile,
    spectrum_frame,
    summary_frame,
)
from memekit.space import beta_schedule


def alpha_bar(schedule: str, T: int = 1000) -> np.ndarray:
    return np.cumprod(1.0 - beta_schedule(schedule, T))


# ---- radial bins ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [7, 8, 16, 17])
def test_frequency_axis_is_k_over_size_up_to_nyquist(size):
    bins = radial_bins(size)
    np.testing.assert_allclose(bins.frequency, np.arange(1, size // 2 + 1) / size)
    assert bins.frequency[-1] == (0.5 if size % 2 == 0 else (size - 1) / (2 * size))


def test_first_ring_holds_the_eight_nearest_neighbours_of_dc():
    # (+-1, 0), (0, +-1) at radius 1 and (+-1, +-1) at sqrt(2) ~ 1.41, which rounds to 1
    for size in (4, 5, 16):
        assert radial_bins(size).counts[0] == 8
    assert radial_bins(2).counts[0] == 3  # (0, 1), (1, 0), (1, 1): frequency -1 == +1 on a 2-grid


def test_non_square_and_tiny_images_are_rejected():
    with pytest.raises(SpectrumError, match="square"):
        rapsd(np.zeros((8, 9)))
    with pytest.raises(SpectrumError, match="at least 2"):
        rapsd(np.zeros((1, 1)))
    with pytest.raises(SpectrumError, match="non-empty"):
        data_power_spectrum(np.zeros((0, 8, 8, 3), dtype=np.uint8))


# ---- RAPSD closed forms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 17])
@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_white_noise_rapsd_is_flat_at_its_variance(size, path):
    n, variance = 400, 4.0
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, np.sqrt(variance), (n, size, size))
    p = rapsd(x) if path == "numpy" else rapsd_torch(torch.from_numpy(x)).numpy()
    p_mean = p.mean(axis=0)
    # |X(k)|^2 ~ variance * Exp(1), mirrored pairs identical: Var(ring mean) = 2 variance^2 / n_k
    std = variance * np.sqrt(2.0 / (n * radial_bins(size).counts))
    assert np.all(np.abs(p_mean - variance) < 5 * std)


@pytest.mark.parametrize("size,k0", [(32, 5), (33, 5), (16, 8)])
def test_sinusoid_rapsd_peaks_at_its_frequency(size, k0):
    amplitude = 1.5
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    x = amplitude * np.cos(2 * np.pi * k0 * xx / size) + 0.3  # the offset only moves DC
    p = rapsd(x)
    bins = radial_bins(size)
    assert np.argmax(p) == k0 - 1
    assert bins.frequency[np.argmax(p)] == k0 / size
    # energy A^2 R^2 / 2 (A^2 R^2 at Nyquist, where cos is +-1) spread over the ring's n_k coefficients
    energy = amplitude**2 * size**2 * (1.0 if 2 * k0 == size else 0.5)
    assert p[k0 - 1] == pytest.approx(energy / bins.counts[k0 - 1], rel=1e-12)
    assert np.abs(np.delete(p, k0 - 1)).max() < 1e-20 * energy


def test_diagonal_sinusoid_lands_in_ring_of_its_radius():
    size = 32  # (ky, kx) = (3, 4) has radius exactly 5
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    p = rapsd(np.sin(2 * np.pi * (3 * yy + 4 * xx) / size))
    assert np.argmax(p) == 5 - 1


def test_parseval_total_power_equals_pixel_energy_without_corners():
    # a band-limited image (all energy inside radius R//2) keeps sum_k n_k P(k) = sum (x - mean)^2
    size = 16
    rng = np.random.default_rng(2)
    spectrum = np.fft.fft2(rng.normal(size=(size, size)))
    k = np.fft.fftfreq(size) * size
    spectrum[np.hypot(k[:, None], k[None, :]) > 6] = 0
    x = np.fft.ifft2(spectrum).real
    p = rapsd(x)
    np.testing.assert_allclose((p * radial_bins(size).counts).sum(), ((x - x.mean()) ** 2).sum(), rtol=1e-10)


# ---- torch path == numpy path ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (5, 17, 17), (4, 8, 8)])
def test_torch_path_equals_numpy_path(shape):
    rng = np.random.default_rng(3)
    x = rng.normal(0.5, 2.0, shape)
    np.testing.assert_allclose(rapsd_torch(torch.from_numpy(x)).numpy(), rapsd(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rapsd_torch(torch.from_numpy(x).float()).numpy(), rapsd(x), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("size", [15, 16])
def test_one_pass_data_spectrum_is_mean_rapsd_for_uint8_and_float_inputs(size):
    images = np.random.default_rng(4).integers(0, 256, (10, size, size, 3), dtype=np.uint8)
    x = to_model_range(images).double().numpy()  # (N, 3, R, R) in [-1, 1]
    reference = rapsd(x).mean(axis=(0, 1))
    np.testing.assert_allclose(data_power_spectrum(images, batch_size=3), reference, rtol=2e-5)
    np.testing.assert_allclose(data_power_spectrum(torch.from_numpy(x).float(), batch_size=4), reference, rtol=2e-5)


# ---- noisy spectra: analytic vs Monte-Carlo ----------------------------------------------------------------
def _monte_carlo_std(x0: np.ndarray, ab: np.ndarray, draws: int) -> np.ndarray:
    """Closed-form std of the Monte-Carlo RAPSD given x0: per ring (mirrored pairs counted twice)
    Var(sum_ring |X_t|^2) = 2 sum_j (s^4 + 2 a^2 s^2 |X0_j|^2); averaged over M images x channels
    x draws rings of n_k coefficients."""
    size = x0.shape[-1]
    bins = radial_bins(size)
    power = np.abs(np.fft.fft2(x0 - x0.mean(axis=(-2, -1), keepdims=True), norm="ortho")) ** 2
    ring_power = np.bincount(bins.index.ravel(), weights=power.reshape(-1, size * size).sum(0),
                             minlength=len(bins.counts) + 1)[:-1]  # sum over images, channels, ring
    m = x0.shape[0] * x0.shape[1]
    s2, a2 = (1.0 - ab)[:, None], ab[:, None]
    var_sum = 2.0 * draws * (s2**2 * m * bins.counts + 2.0 * a2 * s2 * ring_power)
    return np.sqrt(var_sum) / (m * draws * bins.counts)


@pytest.mark.parametrize("schedule", ["linear-ldm", "linear-ddpm", "cosine"])
def test_analytic_noisy_spectrum_matches_monte_carlo(schedule):
    images = dead_leaves(32, 16, seed=5)
    ab_all = alpha_bar(schedule)
    ts = [0, 10, 100, 300, 600, 900, 999]
    draws = 4
    x0 = to_model_range(images).double().numpy()
    analytic = expected_noisy_spectrum(data_power_spectrum(images), ab_all)[ts]
    mc = monte_carlo_noisy_spectrum(images, ab_all, timesteps=ts, draws=draws, seed=6, batch_size=10)
    std = _monte_carlo_std(x0, ab_all[ts], draws)
    # stated tolerance: 5 closed-form standard errors per (t, f) cell (each below 3 % of the value
    # here), and 5 standard errors for the sum over frequencies at each t (catches a global scale error)
    assert np.all(std / analytic < 0.03)
    assert np.all(np.abs(mc - analytic) < 5 * std), (np.abs(mc - analytic) / std).max()
    pooled_z = (mc - analytic).sum(axis=1) / np.sqrt((std**2).sum(axis=1))
    assert np.all(np.abs(pooled_z) < 5), pooled_z


def test_expected_spectrum_is_data_at_no_noise_and_white_at_full_noise():
    p0 = np.array([10.0, 1.0, 0.1])
    e = expected_noisy_spectrum(p0, np.array([1.0, 0.5, 0.0]))
    np.testing.assert_allclose(e, [[10.0, 1.0, 0.1], [5.5, 1.0, 0.55], [1.0, 1.0, 1.0]])


# ---- SNR and crossover -----------------------------------------------------------------------------------
def test_crossover_of_a_power_law_is_exact():
    # P0 = c f^-2 -> SNR = r_t c f^-2 = 1 at f_c = sqrt(r_t c); log-log interpolation is exact
    f = np.arange(1, 33) / 64
    c = 0.01
    ab = np.array([0.999, 0.9, 0.5, 0.1])
    s = snr(c * f**-2, ab)
    f_c, state = crossover_frequency(s, f)
    r = ab / (1 - ab)
    inside = (np.sqrt(r * c) > f[0]) & (np.sqrt(r * c) < f[-1])
    np.testing.assert_allclose(f_c[inside], np.sqrt(r * c)[inside], rtol=1e-12)
    assert list(state[inside]) == ["crossed"] * inside.sum()


def test_crossover_when_snr_never_crosses():
    f = np.array([0.1, 0.2, 0.3])
    f_c, state = crossover_frequency(np.array([[5.0, 2.0, 1.0], [0.9, 0.5, 0.1], [2.0, 0.5, 3.0]]), f)
    assert f_c[0] == 0.3 and state[0] == "above"  # SNR >= 1 everywhere: f_max
    assert f_c[1] == 0.0 and state[1] == "below"  # buried already at the lowest frequency: 0
    assert 0.1 < f_c[2] < 0.2 and state[2] == "crossed"  # first crossing counts


@pytest.mark.parametrize("schedule", ["linear-ldm", "linear-ddpm", "cosine"])
def test_crossover_frequency_is_non_increasing_in_t(schedule):
    profile = spectral_profile(dead_leaves(16, 32, seed=7), alpha_bar(schedule))
    f_c, state = profile.crossover()
    assert np.all(np.diff(f_c) <= 0)
    assert f_c[0] > f_c[-1]
    assert set(state) <= {"crossed", "above", "below"}


# ---- bands and tables ------------------------------------------------------------------------------------
def test_band_fractions_of_a_flat_spectrum_are_the_ring_count_shares():
    bins = radial_bins(32)
    fractions = band_energy_fractions(np.ones(len(bins.counts)), bins.frequency, bins.counts)
    f, n = bins.frequency, bins.counts
    expected = [n[f < BAND_EDGES[0]].sum(), n[(f >= BAND_EDGES[0]) & (f < BAND_EDGES[1])].sum(),
                n[f >= BAND_EDGES[1]].sum()]
    np.testing.assert_allclose(fractions, np.array(expected) / n.sum())


def test_summary_frame_for_a_unit_spectrum():
    # P0 = 1 everywhere: E P_t = 1 and the signal share of every band is alpha_bar_t
    size, T = 16, 50
    bins = radial_bins(size)
    ab = alpha_bar("cosine", T)
    profile = spectral_profile(np.zeros((1, 3, size, size)), ab)
    profile = type(profile)(bins.frequency, bins.counts, np.ones(len(bins.counts)), ab, 1, size)
    frame = summary_frame(profile)
    assert len(frame) == T and list(frame["t"]) == list(range(T))
    for band in ("low", "mid", "high"):
        np.testing.assert_allclose(frame[f"signal_{band}"], ab)
    np.testing.assert_allclose(frame[["energy_low", "energy_mid", "energy_high"]].sum(axis=1), 1.0)
    np.testing.assert_allclose(frame["log_snr"], np.log(ab / (1 - ab)))
    tidy = spectrum_frame(profile)
    assert len(tidy) == T * len(bins.counts)
    np.testing.assert_allclose(tidy["expected_power"], 1.0)


def test_profile_keeps_the_corners_and_every_coefficient_but_dc_once():
    """The partial rings beyond the Nyquist radius are kept beside the full rings: with them the
    count-weighted power is the whole pixel energy (Parseval), with no band limit needed."""
    size = 16
    images = dead_leaves(8, size, seed=1)
    profile = spectral_profile(images, alpha_bar("cosine", 20))
    frequency, counts, power = profile.all_rings
    assert counts.sum() == size * size - 1 and frequency[-1] == pytest.approx(11 / 16)  # ring 11 = round(8 sqrt 2)
    assert len(profile.frequency) == size // 2  # the plotted RAPSD stays on full rings
    x = to_model_range(images).double().numpy()
    energy = ((x - x.mean(axis=(2, 3), keepdims=True)) ** 2).sum(axis=(2, 3)).mean()
    np.testing.assert_allclose((power * counts).sum(), energy, rtol=1e-6)
    # white noise: the high band's energy share is its share of the non-DC coefficients, corners included
    noise = np.random.default_rng(0).normal(size=(64, 3, size, size)).astype(np.float32)
    frame = summary_frame(spectral_profile(noise, alpha_bar("cosine", 20)))
    k = np.fft.fftfreq(size) * size
    f = np.floor(np.hypot(k[:, None], k[None, :]) + 0.5) / size
    high = ((f >= BAND_EDGES[1]) & (f > 0)).sum() / (size * size - 1)
    assert frame["energy_high"].iloc[-1] == pytest.approx(high, rel=0.03)
