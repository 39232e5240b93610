"""Feature-map Fourier analysis (Park & Kim 2022) against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from memekit.analysis.features import (
    INPUT_LAYER,
    FeatureError,
    capture_features,
    default_layers,
    feature_spectra,
    half_diagonal_frequency,
    relative_log_amplitude,
)
from memekit.space import Diffusion, DiffusionSpec, ExpertSpec, build_expert

TINY = ExpertSpec(resolution=16, base_width=8, channel_mult=(1, 2), blocks_per_stage=(1, 1),
                  attention_share=(0.0, 0.5), head_dim=8, attention_pool=(1, 1))


def circular_box_filter() -> nn.Module:
    """3x3 average pooling with stride 1 and circular padding: exactly a circular convolution."""
    return nn.Sequential(nn.CircularPad2d(1), nn.AvgPool2d(3, stride=1))


def test_half_diagonal_frequency_runs_from_dc_to_pi():
    np.testing.assert_allclose(half_diagonal_frequency(8), [0.0, 0.25, 0.5, 0.75, 1.0])
    assert half_diagonal_frequency(7)[-1] == pytest.approx(6 / 7)


def test_relative_log_amplitude_is_zero_at_dc_and_reads_the_diagonal():
    x = torch.randn(2, 3, 8, 8)
    curve = relative_log_amplitude(x)
    assert curve.shape == (5,) and curve[0] == 0
    log_amp = torch.log(torch.fft.fft2(x.double()).abs() + 1e-6).mean(dim=(0, 1))
    np.testing.assert_allclose(curve.numpy(), [log_amp[k, k] - log_amp[0, 0] for k in range(5)], rtol=1e-12)


def test_circular_average_pooling_closed_form():
    # Z(k) = H(k) X(k) with H(w, w) = h(w)^2, h(w) = (1 + 2 cos w) / 3, so the change of relative
    # log amplitude along the diagonal is 2 log|h(w_k)| (up to the 1e-6 in the log; inputs are large)
    size = 16
    x = 100.0 * torch.randn(8, 4, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    delta = relative_log_amplitude(circular_box_filter()(x)) - relative_log_amplitude(x)
    w = np.pi * half_diagonal_frequency(size)
    np.testing.assert_allclose(delta.numpy(), 2 * np.log(np.abs((1 + 2 * np.cos(w)) / 3)), atol=1e-4)
    assert delta[-1] == pytest.approx(2 * np.log(1 / 3), abs=1e-4)  # at pi: h = -1/3


def test_average_pooling_lowers_and_identity_keeps_high_frequencies():
    x0 = torch.rand(6, 3, 16, 16) * 2 - 1
    diffusion = Diffusion(DiffusionSpec(timesteps=100))
    model = nn.Sequential(nn.Identity(), nn.AvgPool2d(3, stride=1, padding=1))
    frame = feature_spectra(model, x0, diffusion, [0, 50, 99], layers=["0", "1"])
    identity = frame[frame["layer"] == "0"]
    pooled = frame[frame["layer"] == "1"]
    assert np.all(identity["delta"] == 0.0)
    top = pooled[pooled["frequency"] == 1.0]
    assert len(top) == 3 and np.all(top["delta"] < -1.0)  # zero-padded box filter: ~2 log(1/3) = -2.2


def test_feature_spectra_matches_circular_closed_form_through_hooks():
    x0 = torch.rand(4, 3, 16, 16, dtype=torch.float64) * 2 - 1
    frame = feature_spectra(circular_box_filter().double(), x0, Diffusion(DiffusionSpec(timesteps=10)), [0],
                            layers=["1"])
    rows = frame[frame["layer"] == "1"]
    w = np.pi * rows["frequency"].to_numpy()
    np.testing.assert_allclose(rows["delta"], 2 * np.log(np.abs((1 + 2 * np.cos(w)) / 3)), atol=1e-3)


def test_expert_unet_layers_by_default():
    torch.manual_seed(0)
    model = build_expert(TINY).eval()
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    frame = feature_spectra(model, x0, Diffusion(DiffusionSpec()), [0, 999])
    layers = default_layers(model)
    assert layers[0] == "down.0" and "mid" in layers and layers[-1].startswith("up.")
    assert set(frame["layer"]) == {INPUT_LAYER, *layers}
    assert set(frame["t"]) == {0, 999}
    assert np.all(frame.loc[frame["frequency"] == 0, "relative_log_amplitude"] == 0)
    assert np.all(frame.loc[frame["layer"] == INPUT_LAYER, "delta"] == 0)
    # the down-sampled stage has 8x8 maps: frequencies 0, 1/4, ..., 1
    assert set(frame.loc[frame["resolution"] == 8, "frequency"]) == {0.0, 0.25, 0.5, 0.75, 1.0}


def test_hooks_are_removed_and_bad_layers_are_reported():
    model = nn.Sequential(nn.Identity(), nn.Flatten())
    x = torch.zeros(1, 1, 4, 4)
    captured = capture_features(model, ["0"], lambda: model(x))
    assert captured["0"].shape == (1, 1, 4, 4)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(FeatureError, match="no layer 'nope'"):
        capture_features(model, ["nope"], lambda: model(x))
    with pytest.raises(FeatureError, match="square"):
        feature_spectra(model, x, Diffusion(DiffusionSpec(timesteps=10)), [0], layers=["1"])
    with pytest.raises(FeatureError, match="outside"):
        feature_spectra(model, x, Diffusion(DiffusionSpec(timesteps=10)), [10], layers=["0"])
