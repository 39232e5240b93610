"""Preconditioning (none / edm / wiener) and the optimal linear denoiser, against references
written here: a numpy Wiener filter on the FFT grid, and the closed-form expected loss of a linear
filter (for x_t = a x0 + s eps and a filter h per coefficient, E|x0_hat - x0|^2 = (1 - a h)^2 |X0|^2
+ h^2 s^2; eps errors are (a / s) times the x0 errors, v errors (1 / s) times)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from memekit.analysis.data import dead_leaves, to_model_range
from memekit.analysis.linear import (
    colour_denoiser_loss,
    linear_denoiser_loss,
    mean_image,
    preconditioned,
    ring_cross_power,
    ring_power,
)
from memekit.search.validation import validation_loss
from memekit.space import (
    Diffusion,
    DiffusionSpec,
    ExpertSpec,
    MemeSpec,
    MultiExpert,
    SpecError,
    get_preset,
    sample_ddim,
)
from memekit.space.precondition import ring_count, ring_counts, ring_index

SIZE = 16


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return dead_leaves(96, SIZE, seed=3)


def zero_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def numpy_ring_power(images: np.ndarray) -> np.ndarray:
    """Per channel, E|FFT(x)|^2 (orthonormal, mean kept) averaged over each integer-radius ring."""
    x = images.astype(np.float64).transpose(0, 3, 1, 2) / 127.5 - 1.0
    power = (np.abs(np.fft.fft2(x, norm="ortho")) ** 2).mean(axis=0)  # (C, R, R)
    k = np.fft.fftfreq(SIZE) * SIZE
    ring = np.rint(np.sqrt(k[:, None] ** 2 + k[None, :] ** 2) + 1e-9).astype(int)  # no .5 ties at 16 px
    return np.stack([[power[c][ring == r].mean() for r in range(ring.max() + 1)] for c in range(3)])


def numpy_wiener_x0(x_t: np.ndarray, ring_powers: np.ndarray, alpha_bar: float) -> np.ndarray:
    a, s2 = math.sqrt(alpha_bar), 1.0 - alpha_bar
    k = np.fft.fftfreq(SIZE) * SIZE
    ring = np.rint(np.sqrt(k[:, None] ** 2 + k[None, :] ** 2) + 1e-9).astype(int)
    power = ring_powers[:, ring]  # (C, R, R)
    gain = a * power / (alpha_bar * power + s2)
    return np.real(np.fft.ifft2(gain[None] * np.fft.fft2(x_t, norm="ortho"), norm="ortho"))


def test_rings_cover_the_grid_and_power_obeys_parseval(images: np.ndarray) -> None:
    assert ring_counts(SIZE).sum() == SIZE**2 and ring_count(SIZE) == 12  # round(8 sqrt 2) = 11, plus DC
    assert ring_index(SIZE)[0, 0] == 0 and ring_index(SIZE)[0, 5] == 5 and ring_index(SIZE)[SIZE // 2, SIZE // 2] == 11
    power = ring_power(images)
    np.testing.assert_allclose(power, numpy_ring_power(images), rtol=1e-6)  # float32 pixels
    x = to_model_range(images).double().numpy()
    np.testing.assert_allclose(power @ ring_counts(SIZE) / SIZE**2, (x**2).mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(power[:, 0], SIZE**2 * (x.mean(axis=(2, 3)) ** 2).mean(axis=0), rtol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("t", [0, 300, 999])
def test_wiener_skip_equals_a_numpy_wiener_filter(images: np.ndarray, prediction: str, t: int) -> None:
    spec = preconditioned(DiffusionSpec(prediction=prediction), "wiener", images)
    diffusion = Diffusion(spec)
    x0 = to_model_range(images[:8])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
    tt = torch.full((8,), t)
    x_t = diffusion.q_sample(x0, tt, noise)
    ours = diffusion.predict(zero_net, x_t, tt).double().numpy()
    ab = float(diffusion.alpha_bar[t])
    x0_hat = numpy_wiener_x0(x_t.double().numpy(), np.asarray(spec.data_spectrum), ab)
    eps_hat = (x_t.double().numpy() - math.sqrt(ab) * x0_hat) / math.sqrt(1 - ab)
    want = eps_hat if prediction == "eps" else math.sqrt(ab) * eps_hat - math.sqrt(1 - ab) * x0_hat
    np.testing.assert_allclose(ours, want, atol=2e-4 * np.abs(want).max())


def expected_zero_net_loss(gain_power: np.ndarray, data_power: np.ndarray, ab: float, prediction: str) -> float:
    a, s2 = math.sqrt(ab), 1.0 - ab
    k = np.fft.fftfreq(SIZE) * SIZE
    ring = np.rint(np.sqrt(k[:, None] ** 2 + k[None, :] ** 2) + 1e-9).astype(int)
    h = a * gain_power[:, ring] / (ab * gain_power[:, ring] + s2)
    err_x0 = ((1 - a * h) ** 2 * data_power[:, ring] + h**2 * s2).mean()
    return err_x0 * (ab / s2 if prediction == "eps" else 1.0 / s2)


@pytest.mark.parametrize("schedule", ["linear-ldm", "linear-ddpm", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("mode", ["edm", "wiener"])
def test_zero_network_loss_is_the_linear_denoisers(images: np.ndarray, schedule: str, prediction: str,
                                                    mode: str) -> None:
    """With F = 0, the validation loss at each t is the closed-form loss of the scalar (edm) or
    Wiener (wiener) estimator on the validation images (up to the noise's sampling error, a few %)."""
    spec = preconditioned(DiffusionSpec(schedule=schedule, prediction=prediction), mode, images[:64])
    diffusion = Diffusion(spec)
    val = images[64:]
    q = numpy_ring_power(val)
    p = np.asarray(spec.data_spectrum) if mode == "wiener" else np.full_like(q, spec.data_std**2)
    many_draws = np.tile(val, (16, 1, 1, 1))  # 16 noise draws per image
    result = validation_loss(zero_net, diffusion, torch.from_numpy(many_draws), count=8)
    want = [expected_zero_net_loss(p, q, float(diffusion.alpha_bar[t]), prediction) for t in result["val_timesteps"]]
    np.testing.assert_allclose(result["val_loss_per_t"], want, rtol=0.05)
    closed = linear_denoiser_loss(p, SIZE, diffusion.alpha_bar, prediction, data_power=q)
    np.testing.assert_allclose(closed[result["val_timesteps"]], want, rtol=1e-9)


def test_val_rel_of_the_wiener_filter_itself_is_about_zero(images: np.ndarray) -> None:
    spec = preconditioned(DiffusionSpec(), "wiener", images)
    diffusion = Diffusion(spec)
    reference = linear_denoiser_loss(np.asarray(spec.data_spectrum), SIZE, diffusion.alpha_bar, "eps",
                                     data_power=ring_power(images))
    result = validation_loss(zero_net, diffusion, torch.from_numpy(images), count=8, reference=reference,
                             intervals=[(0, 500), (500, 1000)])
    assert abs(result["val_rel"]) < 0.03
    rel = [math.log(v / reference[t]) for v, t in zip(result["val_loss_per_t"], result["val_timesteps"], strict=True)]
    assert result["val_rel"] == pytest.approx(sum(rel) / len(rel), rel=1e-12)
    assert result["val_rel_per_expert"][0] == pytest.approx(sum(rel[:4]) / 4, rel=1e-12)
    # a model twice as bad as the filter at every t has val_rel = log 2
    doubled = validation_loss(zero_net, diffusion, torch.from_numpy(images), count=8, reference=reference / 2)
    assert doubled["val_rel"] == pytest.approx(result["val_rel"] + math.log(2), abs=1e-9)


@pytest.mark.parametrize("mode", ["edm", "wiener"])
def test_training_weight_normalises_the_residual(images: np.ndarray, mode: str) -> None:
    """EDM's lambda = 1 / c_out^2: on the data its spectrum was measured from, the weighted loss of
    F = 0 has expectation 1 at every t."""
    spec = preconditioned(DiffusionSpec(), mode, images)
    diffusion = Diffusion(spec)
    x0 = to_model_range(images)
    for t in (10, 400, 990):
        tt = torch.full((len(x0),), t)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        weighted = diffusion.loss(zero_net, x0, tt, noise, weighted=True).mean().item()
        assert weighted == pytest.approx(1.0, rel=0.05)
        assert diffusion.loss(zero_net, x0, tt, noise).mean().item() < weighted or t < 50


def test_none_leaves_the_network_output_unchanged() -> None:
    diffusion = Diffusion(DiffusionSpec())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(diffusion.predict(lambda x_t, t: 3 * x_t, x, torch.tensor([5, 900])), 3 * x)
    assert diffusion.preconditioner(x) is None


def test_specs_round_trip_and_old_specs_load_unchanged() -> None:
    old = get_preset("meme-paper", 32).to_dict()
    assert set(old["diffusion"]) == {"timesteps", "schedule", "prediction"}  # the paper's setting: no new keys
    spec = MemeSpec.from_dict(old)
    assert spec.to_dict() == old and spec.diffusion.preconditioning == "none"
    for mode in ("edm", "wiener", "colour"):
        pre = dataclasses.replace(spec, diffusion=preconditioned(spec.diffusion, mode, dead_leaves(8, 32)))
        again = MemeSpec.from_json(pre.to_json())
        assert again == pre and json.loads(again.to_json())["diffusion"]["preconditioning"] == mode
    with pytest.raises(SpecError, match="rings"):  # a spectrum is tied to its resolution
        pre.with_resolution(64)


@pytest.mark.parametrize(("fields", "message"), [
    ({"preconditioning": "edm"}, "data_std"),
    ({"preconditioning": "tanh"}, "unknown preconditioning"),
    ({"data_std": 0.5}, "used only by"),
    ({"preconditioning": "wiener", "data_std": 0.5}, "data_spectrum"),
    ({"preconditioning": "wiener", "data_std": 0.5, "data_spectrum": [[1.0, -2.0]]}, "positive"),
    ({"preconditioning": "edm", "data_std": 0.5, "data_spectrum": [[1.0, 2.0]]}, "only by preconditioning 'wiener'"),
])
def test_bad_preconditioning_fields_fail_with_one_line(fields: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        DiffusionSpec.from_dict({"timesteps": 1000, "schedule": "linear-ldm", "prediction": "eps", **fields})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mode", ["none", "edm", "wiener", "colour"])
def test_sampling_runs_with_each_mode(mode: str) -> None:
    expert = ExpertSpec(resolution=8, base_width=16, channel_mult=(1, 1), blocks_per_stage=(1, 1),
                        attention_share=(0.5, 1.0), attention_pool=(2, 1))
    spec = MemeSpec(experts=(expert, expert), intervals=((0, 400), (400, 1000)), soft_assignment=(0.8, 0.4))
    res = 8
    spec = dataclasses.replace(spec, diffusion=preconditioned(spec.diffusion, mode, dead_leaves(16, res)))
    torch.manual_seed(0)
    model = MultiExpert(spec).eval()
    x = sample_ddim(model, Diffusion(spec.diffusion), (2, 3, res, res), steps=3,
                    generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, res, res) and torch.isfinite(x).all()


# ---- the colour (affine, channel-mixing) denoiser -------------------------------------------------------
def colour_images(n: int, seed: int) -> np.ndarray:
    """Stationary Gaussian fields with strongly correlated channels around a non-zero mean image, as
    uint8 (n, SIZE, SIZE, 3): a common field plus small per-channel fields, mixed per channel."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(SIZE) * SIZE
    envelope = 1.0 / (1.0 + np.hypot(k[:, None], k[None, :])) ** 1.5  # a power law, like images
    def field(m: int) -> np.ndarray:
        white = rng.normal(size=(m, SIZE, SIZE))
        return np.real(np.fft.ifft2(np.fft.fft2(white) * envelope)) * 4.0
    common = field(n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    mean = np.stack([0.3 * xx - 0.1, 0.2 * yy, -0.2 + 0.1 * xx * yy])  # (3, R, R)
    x = mean[None] + np.stack([0.9 * common, 0.7 * common, -0.6 * common], 1) + 0.15 * np.stack(
        [field(n) for _ in range(3)], 1)
    return np.clip(np.rint((x.transpose(0, 2, 3, 1) + 1) * 127.5), 0, 255).astype(np.uint8)


def test_one_channel_colour_filter_is_the_wiener_filter() -> None:
    """Closed form: with C = 1 and S = P the colour formula is the per-channel Wiener formula."""
    power = numpy_ring_power(dead_leaves(32, SIZE, seed=1))[:1]  # (1, K)
    ab = Diffusion(DiffusionSpec()).alpha_bar
    for prediction in ("eps", "v"):
        np.testing.assert_allclose(colour_denoiser_loss(power.T[:, :, None], SIZE, ab, prediction),
                                   linear_denoiser_loss(power, SIZE, ab, prediction), rtol=1e-10)


def test_cross_power_diagonal_is_the_ring_power_of_the_mean_removed_data() -> None:
    images = colour_images(64, seed=2)
    mean = mean_image(images)
    cross = ring_cross_power(images, mean)
    np.testing.assert_allclose(mean, to_model_range(images).numpy().mean(0), atol=1e-6)
    z = to_model_range(images).numpy().astype(np.float64) - mean
    want = numpy_ring_power(((z + 1) * 127.5).transpose(0, 2, 3, 1))  # numpy_ring_power takes uint8-range arrays
    np.testing.assert_allclose(np.diagonal(cross, axis1=1, axis2=2).T, want, rtol=1e-6)
    assert np.allclose(cross, cross.transpose(0, 2, 1))
    assert np.all(np.linalg.eigvalsh(cross) > -1e-9)  # positive semi-definite per ring


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_zero_network_loss_of_the_colour_skip_is_its_closed_form(prediction: str) -> None:
    """Monte Carlo (the colour preconditioner with F = 0 on noised held-out images) against the closed
    form on their cross-power around the training mean; and it beats the per-channel Wiener filter."""
    train, val = colour_images(256, seed=4), colour_images(48, seed=5)
    spec = preconditioned(DiffusionSpec(prediction=prediction), "colour", train)
    diffusion = Diffusion(spec)
    many_draws = np.tile(val, (16, 1, 1, 1))
    result = validation_loss(zero_net, diffusion, torch.from_numpy(many_draws), count=8)
    mean = np.asarray(spec.data_mean)
    closed = colour_denoiser_loss(np.asarray(spec.data_cross_spectrum), SIZE, diffusion.alpha_bar, prediction,
                                  data_cross=ring_cross_power(val, mean))
    ts = result["val_timesteps"]
    np.testing.assert_allclose(result["val_loss_per_t"], closed[ts], rtol=0.05)
    wiener = Diffusion(preconditioned(DiffusionSpec(prediction=prediction), "wiener", train))
    per_channel = validation_loss(zero_net, wiener, torch.from_numpy(many_draws), count=8)
    assert result["val_loss"] < 0.8 * per_channel["val_loss"]  # correlated channels: the colour filter gains


def test_colour_training_weight_normalises_the_residual() -> None:
    images = colour_images(256, seed=6)
    diffusion = Diffusion(preconditioned(DiffusionSpec(), "colour", images))
    x0 = to_model_range(images)
    for t in (10, 400, 990):
        tt = torch.full((len(x0),), t)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        assert diffusion.loss(zero_net, x0, tt, noise, weighted=True).mean().item() == pytest.approx(1.0, rel=0.06)


def test_colour_statistics_are_checked() -> None:
    with pytest.raises(SpecError, match="data_mean"):
        DiffusionSpec.from_dict({"timesteps": 1000, "schedule": "linear-ldm", "prediction": "eps",
                                 "preconditioning": "colour", "data_std": 0.5})
    with pytest.raises(SpecError, match="only by preconditioning 'colour'"):
        DiffusionSpec.from_dict({"timesteps": 1000, "schedule": "linear-ldm", "prediction": "eps",
                                 "preconditioning": "wiener", "data_std": 0.5,
                                 "data_spectrum": [[1.0, 2.0]], "data_mean": [[[0.0]]]})
    spec = preconditioned(DiffusionSpec(), "colour", dead_leaves(8, SIZE))
    with pytest.raises(SpecError, match="colour statistics"):
        Diffusion(spec).preconditioner(torch.zeros(1, 3, 2 * SIZE, 2 * SIZE))
