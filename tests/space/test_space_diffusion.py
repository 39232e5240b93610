"""Schedules, q_sample and predictions in closed form; DDPM/DDIM on a Gaussian toy problem.

Gaussian toy problem: x0 ~ N(mu, sigma^2) i.i.d. per pixel. Then x_t = a_t x0 + s_t eps is
Gaussian and the exact optimal denoiser is linear in x_t:

    E[eps | x_t] = s_t (x_t - a_t mu) / D_t,   E[x0 | x_t] = mu + a_t sigma^2 (x_t - a_t mu) / D_t,
    D_t = a_t^2 sigma^2 + s_t^2.

With it every sampler step is x' = A x + B + c z, so the output law is N(m, v) with m, v propagated
in closed form (m' = A m + B, v' = A^2 v + c^2) from N(0, 1), written here independently of
memekit with the DDPM posterior (Ho et al. 2020, eq. 6-7) and DDIM (Song et al. 2021, eq. 12).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memekit.space import Diffusion, DiffusionSpec, SpecError, beta_schedule, ddim_timesteps, sample
from memekit.space.diffusion import sample_ddim, sample_ddpm


def reference_betas(name: str, T: int) -> np.ndarray:
    """The published schedules, written out here."""
    if name == "linear-ldm":
        return np.linspace(math.sqrt(0.0015), math.sqrt(0.0195), T) ** 2
    if name == "linear-ddpm":  # DDPM's 1e-4 .. 0.02 at T = 1000, both ends scaled by 1000 / T
        return np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    raise AssertionError(name)


def reference_alpha_bar(betas: np.ndarray) -> np.ndarray:
    out, prod = [], 1.0
    for beta in betas:
        prod *= 1.0 - beta
        out.append(prod)
    return np.array(out)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [50, 1000])
def test_linear_ldm_schedule(T):
    betas = beta_schedule("linear-ldm", T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    np.testing.assert_allclose(betas, reference_betas("linear-ldm", T), rtol=1e-12, atol=0)
    assert betas[0] == pytest.approx(0.0015, rel=1e-12) and betas[-1] == pytest.approx(0.0195, rel=1e-12)
    np.testing.assert_allclose(np.diff(np.sqrt(betas)), (math.sqrt(0.0195) - math.sqrt(0.0015)) / (T - 1),
                               rtol=1e-9)  # sqrt(beta) is linear in t


@pytest.mark.parametrize(("T", "first", "last"), [(1000, 1e-4, 0.02), (50, 2e-3, 0.4), (100, 1e-3, 0.2)])
def test_linear_ddpm_schedule(T, first, last):
    betas = beta_schedule("linear-ddpm", T)
    assert betas[0] == pytest.approx(first, rel=1e-12) and betas[-1] == pytest.approx(last, rel=1e-12)
    np.testing.assert_allclose(np.diff(betas), (last - first) / (T - 1), rtol=1e-9)


@pytest.mark.parametrize("T", [50, 1000])
def test_cosine_schedule_alpha_bar(T):
    """alpha_bar_t = f(t+1) / f(0), f(u) = cos^2((u/T + s) / (1 + s) pi/2), s = 0.008, until the
    first beta clipped at 0.999 (Nichol & Dhariwal 2021)."""
    betas = beta_schedule("cosine", T)
    assert betas.max() <= 0.999 and betas.min() > 0
    s = 0.008
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar_exact = f[1:] / f[0]
    unclipped = 1.0 - f[1:] / f[:-1]  # what the betas would be without the clip
    clipped = unclipped > 0.999
    n_free = int(np.argmax(clipped)) if clipped.any() else T
    assert n_free >= T - 1  # only the very last step is clipped
    alpha_bar = Diffusion(DiffusionSpec(timesteps=T, schedule="cosine")).alpha_bar
    np.testing.assert_allclose(alpha_bar[:n_free], alpha_bar_exact[:n_free], rtol=1e-10)
    np.testing.assert_allclose(betas[clipped], 0.999)


@pytest.mark.parametrize("schedule", ["linear-ldm", "linear-ddpm", "cosine"])
def test_alpha_bar_is_cumulative_product(schedule):
    T = 50
    diffusion = Diffusion(DiffusionSpec(timesteps=T, schedule=schedule))
    np.testing.assert_allclose(diffusion.alpha_bar, reference_alpha_bar(beta_schedule(schedule, T)), rtol=1e-12)
    assert np.all(np.diff(diffusion.alpha_bar) < 0)


def test_unknown_schedule_and_sampler_are_spec_errors():
    with pytest.raises(SpecError, match="unknown schedule 'quadratic'"):
        beta_schedule("quadratic", 10)
    diffusion = Diffusion(DiffusionSpec(timesteps=10, schedule="linear-ddpm"))
    with pytest.raises(SpecError, match="unknown sampler 'euler'"):
        sample(lambda x, t: x, diffusion, (1, 1, 2, 2), sampler="euler")


def test_ddim_timesteps_closed_form():
    assert ddim_timesteps(50, 50) == list(range(49, -1, -1))
    assert ddim_timesteps(1000, 1) == [999]
    ts = ddim_timesteps(1000, 7)  # evenly spaced from T-1 to 0
    assert ts == [999, 832, 666, 500, 333, 166, 0]
    with pytest.raises(SpecError):
        ddim_timesteps(10, 11)


# --------------------------------------------------------------------------------------------
# q_sample, targets, prediction conversions
# --------------------------------------------------------------------------------------------
def test_q_sample_closed_form_and_moments():
    T = 1000
    diffusion = Diffusion(DiffusionSpec(timesteps=T, schedule="linear-ldm"))
    alpha_bar = reference_alpha_bar(reference_betas("linear-ldm", T))
    t = torch.tensor([0, 250, 999])
    g = torch.Generator().manual_seed(0)
    n = 100_000
    x0 = torch.tensor([0.7, -0.3, 0.5])[:, None, None, None].expand(3, 1, 1, n)
    noise = torch.randn(3, 1, 1, n, generator=g)
    x_t = diffusion.q_sample(x0, t, noise)
    for row, step in enumerate(t.tolist()):
        a, s = math.sqrt(alpha_bar[step]), math.sqrt(1 - alpha_bar[step])
        torch.testing.assert_close(x_t[row], a * x0[row] + s * noise[row], rtol=1e-6, atol=1e-6)
        # moments over the noise: mean a x0, variance s^2
        mean, var = x_t[row].double().mean().item(), x_t[row].double().var().item()
        assert abs(mean - a * x0[row, 0, 0, 0].item()) < 5 * s / math.sqrt(n)
        assert abs(var - s * s) < 5 * s * s * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize(("schedule", "prediction"), [("linear-ldm", "eps"), ("linear-ldm", "v"),
                                                      ("linear-ddpm", "eps"), ("cosine", "v")])
def test_split_prediction_inverts_the_true_target(schedule, prediction):
    T = 1000
    diffusion = Diffusion(DiffusionSpec(timesteps=T, schedule=schedule, prediction=prediction))
    alpha_bar = Diffusion(DiffusionSpec(timesteps=T, schedule=schedule)).alpha_bar
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 1, 100, 500, 998, 999])
    x0 = torch.rand(6, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(6, 3, 4, 4, generator=g)
    x_t = diffusion.q_sample(x0, t, noise)
    target = diffusion.target(x0, t, noise)
    a = torch.tensor(np.sqrt(alpha_bar[t.numpy()]), dtype=torch.float32)[:, None, None, None]
    s = torch.tensor(np.sqrt(1 - alpha_bar[t.numpy()]), dtype=torch.float32)[:, None, None, None]
    if prediction == "eps":
        assert torch.equal(target, noise)
    else:  # v = a_t eps - s_t x0
        torch.testing.assert_close(target, a * noise - s * x0, rtol=1e-6, atol=1e-6)
    x0_hat, eps_hat = diffusion.split_prediction(target, x_t, t)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=2e-5)
    torch.testing.assert_close(eps_hat, noise, rtol=0, atol=2e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_is_zero_for_the_true_target_and_closed_form_otherwise(prediction):
    diffusion = Diffusion(DiffusionSpec(timesteps=50, schedule="linear-ddpm", prediction=prediction))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 4, 4, generator=g)
    noise = torch.randn(4, 3, 4, 4, generator=g)
    t = torch.tensor([0, 10, 30, 49])
    target = diffusion.target(x0, t, noise)
    loss = diffusion.loss(lambda x_t, tt: target, x0, t, noise)
    assert loss.shape == (4,)
    torch.testing.assert_close(loss, torch.zeros(4), rtol=0, atol=1e-12)
    zero_loss = diffusion.loss(lambda x_t, tt: torch.zeros_like(x_t), x0, t, noise)
    torch.testing.assert_close(zero_loss, target.square().mean(dim=(1, 2, 3)))


# --------------------------------------------------------------------------------------------
# Samplers on the Gaussian toy problem
# --------------------------------------------------------------------------------------------
T_TOY = 50
MU, SIGMA = 0.5, 0.3
SHAPE = (100, 1, 10, 100)  # 100,000 i.i.d. pixels
N_PIXELS = math.prod(SHAPE)
TOY_ALPHA_BAR = reference_alpha_bar(reference_betas("linear-ddpm", T_TOY))
TOY_BETAS = reference_betas("linear-ddpm", T_TOY)


class GaussianDenoiser:
    """The exact E[eps | x_t] (or E[v | x_t]) for x0 ~ N(MU, SIGMA^2); records the t it is asked."""

    def __init__(self, prediction: str) -> None:
        self.prediction = prediction
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        step = int(t[0])
        assert bool((t == step).all()) and t.shape == (x.shape[0],)
        self.calls.append(step)
        a, s = math.sqrt(TOY_ALPHA_BAR[step]), math.sqrt(1 - TOY_ALPHA_BAR[step])
        d = a * a * SIGMA**2 + s * s
        xd = x.double()
        eps = s * (xd - a * MU) / d
        if self.prediction == "eps":
            return eps.float()
        x0 = MU + a * SIGMA**2 * (xd - a * MU) / d
        return (a * eps - s * x0).float()


def _x0_map(step: int) -> tuple[float, float]:
    """E[x0 | x_t] = alpha x_t + beta."""
    a, s = math.sqrt(TOY_ALPHA_BAR[step]), math.sqrt(1 - TOY_ALPHA_BAR[step])
    d = a * a * SIGMA**2 + s * s
    return a * SIGMA**2 / d, s * s * MU / d


def ddpm_reference(posterior_variance: str = "beta_tilde") -> tuple[float, float]:
    """Mean and variance of ancestral DDPM sampling from x_{T-1} ~ N(0, 1):
    x_{t-1} = c0 x0_hat + ct x_t + sqrt(var_t) z with the posterior q(x_{t-1} | x_t, x0)."""
    m, v = 0.0, 1.0
    for step in range(T_TOY - 1, -1, -1):
        ab, beta = TOY_ALPHA_BAR[step], TOY_BETAS[step]
        ab_prev = TOY_ALPHA_BAR[step - 1] if step > 0 else 1.0
        c0 = math.sqrt(ab_prev) * beta / (1 - ab)
        ct = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        alpha, bias = _x0_map(step)
        A, B = c0 * alpha + ct, c0 * bias
        if step == 0:
            var = 0.0
        elif posterior_variance == "beta_tilde":
            var = beta * (1 - ab_prev) / (1 - ab)
        else:
            var = beta
        m, v = A * m + B, A * A * v + var
    return m, v


def ddim_deterministic_reference(steps: list[int]) -> tuple[float, float]:
    """eta = 0: x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps_hat, an affine map A x + B."""
    A_total, B_total = 1.0, 0.0
    for i, step in enumerate(steps):
        a, s = math.sqrt(TOY_ALPHA_BAR[step]), math.sqrt(1 - TOY_ALPHA_BAR[step])
        ab_prev = TOY_ALPHA_BAR[steps[i + 1]] if i + 1 < len(steps) else 1.0
        alpha, bias = _x0_map(step)
        # eps_hat = (x - a x0_hat) / s
        A = math.sqrt(ab_prev) * alpha + math.sqrt(1 - ab_prev) * (1 - a * alpha) / s
        B = math.sqrt(ab_prev) * bias - math.sqrt(1 - ab_prev) * a * bias / s
        A_total, B_total = A * A_total, A * B_total + B
    return A_total, B_total


def ddim_reference(steps: list[int], eta: float) -> tuple[float, float]:
    """DDIM eq. 12 with sigma_t = eta sqrt((1 - ab_prev) / (1 - ab) (1 - ab / ab_prev)) (eq. 16):
    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z."""
    m, v = 0.0, 1.0
    for i, step in enumerate(steps):
        ab = TOY_ALPHA_BAR[step]
        a, s = math.sqrt(ab), math.sqrt(1 - ab)
        ab_prev = TOY_ALPHA_BAR[steps[i + 1]] if i + 1 < len(steps) else 1.0
        sigma2 = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        c = math.sqrt(1 - ab_prev - sigma2)
        alpha, bias = _x0_map(step)
        A = math.sqrt(ab_prev) * alpha + c * (1 - a * alpha) / s
        B = math.sqrt(ab_prev) * bias - c * a * bias / s
        m, v = A * m + B, A * A * v + sigma2
    return m, v


def _assert_gaussian(x: torch.Tensor, mean: float, var: float) -> None:
    x = x.double().flatten()
    n = x.numel()
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n), (x.mean().item(), mean)
    assert abs(x.var().item() - var) < 5 * var * math.sqrt(2 / (n - 1)), (x.var().item(), var)


def _toy_diffusion(prediction: str) -> Diffusion:
    return Diffusion(DiffusionSpec(timesteps=T_TOY, schedule="linear-ddpm", prediction=prediction))


def test_gaussian_reference_is_sensible_and_discriminating():
    """Checks of the test's own recursion: the mean lands on MU, and the 5-SE variance bound
    separates the posterior variance beta_tilde from beta (so the sampler tests have power)."""
    m, v = ddpm_reference()
    assert abs(m - MU) < 1e-3 and 0.5 * SIGMA**2 < v < 1.5 * SIGMA**2
    _, v_beta = ddpm_reference("beta")
    assert abs(v_beta - v) > 10 * 5 * v * math.sqrt(2 / N_PIXELS)
    all_steps = list(range(T_TOY - 1, -1, -1))
    np.testing.assert_allclose(ddim_reference(all_steps, 1.0), (m, v), rtol=1e-9)  # DDIM eta=1 is DDPM
    A, B = ddim_deterministic_reference(all_steps)
    np.testing.assert_allclose(ddim_reference(all_steps, 0.0), (B, A * A), rtol=1e-9)
    _, v_ddim = ddim_deterministic_reference(all_steps)
    assert abs(v_ddim**2 - v) > 10 * 5 * v * math.sqrt(2 / N_PIXELS)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_ancestral_draws_the_propagated_gaussian(prediction):
    denoiser = GaussianDenoiser(prediction)
    x = sample_ddpm(denoiser, _toy_diffusion(prediction), SHAPE, generator=torch.Generator().manual_seed(0),
                    clip_x0=False)
    assert x.shape == SHAPE
    assert denoiser.calls == list(range(T_TOY - 1, -1, -1))
    _assert_gaussian(x, *ddpm_reference())


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_eta_one_all_steps_draws_the_ddpm_gaussian(prediction):
    denoiser = GaussianDenoiser(prediction)
    x = sample_ddim(denoiser, _toy_diffusion(prediction), SHAPE, steps=T_TOY, eta=1.0,
                    generator=torch.Generator().manual_seed(1), clip_x0=False)
    assert denoiser.calls == list(range(T_TOY - 1, -1, -1))
    _assert_gaussian(x, *ddpm_reference())


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_fewer_steps_draws_the_propagated_gaussian(prediction, eta):
    """With S < T steps the law depends strongly on sigma_t (unlike S = T with the exact
    denoiser, where DDIM nearly preserves the marginals for any sigma)."""
    steps = [int(v) for v in np.round(np.linspace(T_TOY - 1, 0, 10))]
    denoiser = GaussianDenoiser(prediction)
    x = sample_ddim(denoiser, _toy_diffusion(prediction), SHAPE, steps=10, eta=eta,
                    generator=torch.Generator().manual_seed(4), clip_x0=False)
    assert denoiser.calls == steps
    _assert_gaussian(x, *ddim_reference(steps, eta))


@pytest.mark.parametrize("steps", [T_TOY, 10])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_eta_zero_is_the_deterministic_affine_map(prediction, steps):
    diffusion = _toy_diffusion(prediction)
    expected_steps = [int(v) for v in np.round(np.linspace(T_TOY - 1, 0, steps))]
    denoiser = GaussianDenoiser(prediction)
    x = sample_ddim(denoiser, diffusion, SHAPE, steps=steps, eta=0.0,
                    generator=torch.Generator().manual_seed(2), clip_x0=False)
    assert denoiser.calls == expected_steps
    again = sample_ddim(GaussianDenoiser(prediction), diffusion, SHAPE, steps=steps, eta=0.0,
                        generator=torch.Generator().manual_seed(2), clip_x0=False)
    assert torch.equal(x, again)  # same seed, same output
    A, B = ddim_deterministic_reference(expected_steps)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))  # the sampler's initial noise
    torch.testing.assert_close(x.double(), A * z.double() + B, rtol=0, atol=1e-4)
    _assert_gaussian(x, B, A * A)


def test_sample_dispatch_matches_the_sampler_functions():
    diffusion = _toy_diffusion("eps")
    shape = (4, 1, 4, 4)
    for sampler, direct in (("ddpm", lambda g: sample_ddpm(GaussianDenoiser("eps"), diffusion, shape,
                                                                 generator=g, clip_x0=False)),
                            ("ddim", lambda g: sample_ddim(GaussianDenoiser("eps"), diffusion, shape, steps=10,
                                                           eta=0.5, generator=g, clip_x0=False))):
        via = sample(GaussianDenoiser("eps"), diffusion, shape, sampler=sampler, steps=10, eta=0.5,
                     generator=torch.Generator().manual_seed(3), clip_x0=False)
        assert torch.equal(via, direct(torch.Generator().manual_seed(3)))
