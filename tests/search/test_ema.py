"""Post-hoc EMA (memekit.search.ema): the power-function maths against closed forms and quadrature,
tracking that leaves training untouched, reconstruction against directly computed EMAs, resume, and
``memekit ema`` writing a model that ``memekit sample`` reads."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, assert_one_line_error, assert_same, tiny_spec, tiny_trainer
from scipy.integrate import quad
from torch.optim.swa_utils import AveragedModel

from memekit.search.checkpoint import list_checkpoints, load_checkpoint
from memekit.search.ema import (
    PosthocEMAError,
    PowerFunctionEMA,
    fixed_decay_sigma_rel,
    gamma_to_sigma_rel,
    list_snapshots,
    posthoc_sweep,
    power_function_inner_products,
    profile_fit_error,
    reconstruct,
    save_snapshots,
    sigma_rel_to_gamma,
    solve_posthoc_coefficients,
)
from memekit.search.sampling import load_model
from memekit.search.train import TrainingError, ema_warmup_avg_fn


# ---- the maths -------------------------------------------------------------------------------------
def _profile(t: float, gamma: float):  # noqa: ANN202 - a density on [0, t]
    return lambda tau: (gamma + 1) * tau ** gamma / t ** (gamma + 1) if 0 <= tau <= t else 0.0


@pytest.mark.parametrize(("t_a", "g_a", "t_b", "g_b"), [(1.0, 6.9, 1.0, 16.97), (0.4, 6.9, 1.0, 16.97),
                                                        (1.0, 6.9, 0.4, 16.97), (3.0, 2.0, 5.0, 0.5)])
def test_inner_products_equal_the_integral_of_the_two_profiles(t_a, g_a, t_b, g_b) -> None:
    """<p_a, p_b> = integral_0^min(t_a, t_b) p_a(tau) p_b(tau) dtau, by quadrature."""
    pa, pb = _profile(t_a, g_a), _profile(t_b, g_b)
    numeric, _ = quad(lambda tau: pa(tau) * pb(tau), 0, min(t_a, t_b), epsabs=0, epsrel=1e-12, limit=200)
    assert float(power_function_inner_products(t_a, g_a, t_b, g_b)) == pytest.approx(numeric, rel=1e-9)


@pytest.mark.parametrize(("t_in", "g_in", "coef", "t_out", "g_out"), [
    ((1.0, 1.0, 0.5), (6.94, 16.97, 16.97), (0.7, 0.5, -0.2), 1.0, 30.3),
    ((2.0, 3.0), (2.0, 0.5), (-1.0, 2.0), 3.0, 1.0),
])
def test_profile_fit_error_is_the_relative_l2_distance_by_quadrature(t_in, g_in, coef, t_out, g_out) -> None:
    """||sum c_i p_i - p_out|| / ||p_out||, the integral taken numerically over the profiles' support."""
    parts = [_profile(t, g) for t, g in zip(t_in, g_in, strict=True)]
    target = _profile(t_out, g_out)
    edges = sorted({0.0, *t_in, t_out})

    def integral(f) -> float:  # noqa: ANN001 - piecewise smooth: integrate between the kinks
        return sum(quad(f, a, b, epsabs=0, epsrel=1e-12, limit=200)[0] for a, b in itertools.pairwise(edges))

    diff2 = integral(lambda tau: (sum(c * p(tau) for c, p in zip(coef, parts, strict=True)) - target(tau)) ** 2)
    expected = math.sqrt(diff2 / integral(lambda tau: target(tau) ** 2))
    assert profile_fit_error(t_in, g_in, t_out, g_out, coef) == pytest.approx(expected, rel=1e-7)
    assert profile_fit_error((t_out, *t_in), (g_out, *g_in), t_out, g_out, (1.0,) + (0.0,) * len(t_in)) < 1e-7


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.10, 0.2, 0.28])
def test_sigma_rel_is_the_profiles_relative_std(sigma_rel: float) -> None:
    """gamma from sigma_rel gives a profile on [0, 1] whose std (quadrature) is sigma_rel; and back."""
    gamma = sigma_rel_to_gamma(sigma_rel)
    p = _profile(1.0, gamma)
    mean = quad(lambda tau: tau * p(tau), 0, 1, epsrel=1e-12)[0]
    var = quad(lambda tau: (tau - mean) ** 2 * p(tau), 0, 1, epsrel=1e-12)[0]
    assert math.sqrt(var) == pytest.approx(sigma_rel, rel=1e-9)
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-12)
    assert gamma > 0


def test_sigma_rel_out_of_range_is_refused() -> None:
    for bad in (0.0, -0.1, 0.29, 1.0):
        with pytest.raises(PosthocEMAError, match="sigma_rel must lie in"):
            sigma_rel_to_gamma(bad)


def _scalar_module() -> torch.nn.Module:
    module = torch.nn.Module()
    module.theta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    return module


def test_tracked_profile_has_the_power_function_moments() -> None:
    """Tracking theta = (tau, tau^2) at tau = k / T over T steps gives the profile's mean
    (gamma + 1) / (gamma + 2) and std sigma_rel (both up to the O(1/T) of discrete steps)."""
    model, steps = _scalar_module(), 4000
    tracker = PowerFunctionEMA(model, (0.05, 0.10))
    for k in range(1, steps + 1):
        with torch.no_grad():
            model.theta.copy_(torch.tensor([k / steps, (k / steps) ** 2], dtype=torch.float64))
        tracker.update(model, t_next=k * 16, t_delta=16)
    for gamma, sigma_rel, ema in zip(tracker.gammas, tracker.sigma_rels, tracker.emas, strict=True):
        mean, second = (float(v) for v in ema[0])
        assert mean == pytest.approx((gamma + 1) / (gamma + 2), abs=2 / steps)
        assert math.sqrt(second - mean ** 2) == pytest.approx(sigma_rel, rel=0.02)


def test_tracking_writes_no_parameter_and_draws_no_random_number() -> None:
    model = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tracker = PowerFunctionEMA(model, (0.05, 0.10))
    state = torch.get_rng_state()
    for k in range(1, 4):
        tracker.update(model, k * 4, 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert_same(dict(model.state_dict()), before, "weights")


def _direct_ema(thetas: np.ndarray, gamma: float) -> np.ndarray:
    """The power-function EMA of ``thetas`` (one row per step), in float64: beta_k = (1 - 1/k)^(gamma + 1)."""
    ema = thetas[0].copy()
    for k, theta in enumerate(thetas, start=1):
        beta = (1 - 1 / k) ** (gamma + 1)
        ema = beta * ema + (1 - beta) * theta
    return ema


def _synthetic(steps: int, size: int = 20) -> np.ndarray:
    """A random walk with drift: parameters that keep moving, as in training."""
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(size=(steps, size)), axis=0) / math.sqrt(steps)
    return walk + np.linspace(0, 3, steps)[:, None] * rng.normal(size=size)


def test_coefficients_reproduce_an_ema_that_was_never_tracked() -> None:
    """Snapshots of profiles 0.05 and 0.10 every 50 of 1000 steps; the solve's combination for
    sigma_rel 0.08 and 0.15 at the end equals the EMA computed directly with their gamma, to 1 % of
    how far that EMA lies from the nearest tracked one (the least-squares error of the paper)."""
    steps, every, batch = 1000, 50, 8
    thetas = _synthetic(steps)
    tracked = {s: [] for s in (0.05, 0.10)}
    times = []
    for end in range(every, steps + 1, every):
        times.append(end * batch)
        for s in tracked:
            tracked[s].append(_direct_ema(thetas[:end], sigma_rel_to_gamma(s)))
    t_in = [t for t in times for _ in tracked]
    g_in = [sigma_rel_to_gamma(s) for _ in times for s in tracked]
    snaps = np.stack([tracked[s][i] for i in range(len(times)) for s in tracked])
    for out in (0.08, 0.15):
        gamma = sigma_rel_to_gamma(out)
        coef = solve_posthoc_coefficients(t_in, g_in, [steps * batch], [gamma])[:, 0]
        direct = _direct_ema(thetas, gamma)
        nearest = min(np.abs(direct - tracked[s][-1]).max() for s in tracked)
        assert coef.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.abs(coef @ snaps - direct).max() < 0.01 * nearest, out


def test_a_tracked_profile_is_reconstructed_as_its_snapshot(tmp_path: Path) -> None:
    """Reconstructing sigma_rel 0.10, which was tracked, gives its newest snapshot (coefficient 1 on it)
    and that equals the tracker's weights to 1e-6."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    tracker = PowerFunctionEMA(model, (0.05, 0.10))
    gen = torch.Generator().manual_seed(0)
    meta = {"spec": tiny_spec().to_json(), "config": "{}"}
    for k in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        tracker.update(model, k * 8, 8)
        if k % 10 == 0:
            save_snapshots(tmp_path, tracker, model, meta, k, k * 8)
    (recon,) = reconstruct(tmp_path, [0.10])
    assert recon.step == 30 and len(recon.snapshots) == 6
    assert recon.coefficients[-1] == pytest.approx(1.0, abs=1e-6)
    expected, buffers = tracker.weights(model, 1)
    assert "1.running_mean" in buffers and "0.weight" not in buffers
    for name, value in expected.items():
        torch.testing.assert_close(recon.weights[name], value, rtol=0, atol=1e-6, msg=name)


def test_fixed_decay_sigma_rel_is_the_std_of_the_trainers_ema() -> None:
    """The trainer's EMA (AveragedModel + warm-up) of theta = (tau, tau^2), tau = k / N, has mean m
    and second moment m2: its relative std sqrt(m2 - m^2) is fixed_decay_sigma_rel."""
    updates, decay = 300, 0.99
    model = _scalar_module()
    ema = AveragedModel(model, multi_avg_fn=ema_warmup_avg_fn(decay))
    for k in range(1, updates + 1):
        with torch.no_grad():
            model.theta.copy_(torch.tensor([k / updates, (k / updates) ** 2], dtype=torch.float64))
        ema.update_parameters(model)
    mean, second = (float(v) for v in ema.module.theta.detach())
    assert fixed_decay_sigma_rel(decay, updates) == pytest.approx(math.sqrt(second - mean ** 2), rel=1e-6)


# ---- training with snapshots ---------------------------------------------------------------------------
def test_snapshots_leave_training_bit_identical(tmp_path: Path) -> None:
    """5 steps with snapshots every 2 steps train to the same weights, EMA and optimiser state as 5
    steps without; the snapshots are at steps 2, 4 and the end, 5, for both profiles."""
    spec = tiny_spec(dropout=0.1)  # dropout: the steps draw random numbers
    tiny_trainer(tmp_path / "off", spec, images=8 * 5).run()
    tiny_trainer(tmp_path / "on", spec, images=8 * 5, posthoc_ema_every=2).run()
    off, on = load_checkpoint(tmp_path / "off"), load_checkpoint(tmp_path / "on")
    for key in ("model", "ema", "optimizer"):
        assert_same(off[key], on[key], key)
    assert "posthoc_ema_profiles" in on and "posthoc_ema_profiles" not in off
    assert [(s.step, s.sigma_rel) for s in list_snapshots(tmp_path / "on")] == \
        [(2, 0.05), (2, 0.1), (4, 0.05), (4, 0.1), (5, 0.05), (5, 0.1)]
    assert not (tmp_path / "off" / "ema_snapshots").exists()


def test_a_resumed_run_tracks_the_same_profiles_as_a_straight_one(tmp_path: Path) -> None:
    """3 steps + resume + 3 steps = 6 straight steps, profiles and snapshots bit for bit; a snapshot
    written after the checkpoint the run resumes from is removed (and written again)."""
    spec, fields = tiny_spec(dropout=0.1), dict(posthoc_ema_every=2)
    tiny_trainer(tmp_path / "straight", spec, images=8 * 6, **fields).run()
    tiny_trainer(tmp_path / "resumed", spec, images=8 * 3, **fields).run()
    stale = tmp_path / "resumed" / "ema_snapshots" / "step-000000005-sigma-0.050.safetensors"
    stale.write_bytes(b"written after the checkpoint")
    said: list[str] = []
    trainer = tiny_trainer(tmp_path / "resumed", spec, images=8 * 6, **fields)
    trainer.say = said.append
    trainer.run()
    assert any("removed 1 post-hoc EMA snapshot(s) past step 3" in line for line in said), said
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    assert_same(a["posthoc_ema_profiles"], b["posthoc_ema_profiles"], "profiles")
    assert_same(a["model"], b["model"], "model")
    from safetensors.torch import load_file

    straight = {(s.step, s.sigma_rel): s.path for s in list_snapshots(tmp_path / "straight")}
    resumed = {(s.step, s.sigma_rel): s.path for s in list_snapshots(tmp_path / "resumed")}
    assert set(resumed) == set(straight) | {(3, 0.05), (3, 0.1)}  # the first run's end
    for key, path in straight.items():
        assert_same(load_file(path), load_file(resumed[key]), str(key))


def test_profiles_cannot_start_or_change_mid_run(tmp_path: Path) -> None:
    spec = tiny_spec()
    tiny_trainer(tmp_path / "plain", spec, images=8 * 2).run()
    with pytest.raises(TrainingError, match="without post-hoc EMA snapshots; their profiles span the whole run"):
        tiny_trainer(tmp_path / "plain", spec, images=8 * 4, posthoc_ema_every=1).run()
    tiny_trainer(tmp_path / "tracked", spec, images=8 * 2, posthoc_ema_every=1).run()
    with pytest.raises(TrainingError, match="--posthoc-ema-sigma-rel 0.05 0.1, this command gives 0.05 0.2"):
        tiny_trainer(tmp_path / "tracked", spec, images=8 * 4, posthoc_ema_every=1,
                     posthoc_ema_sigma_rels=(0.05, 0.2)).run()
    with pytest.raises(TrainingError, match="resume with --posthoc-ema-every 1, or pass --allow-config-change"):
        tiny_trainer(tmp_path / "tracked", spec, images=8 * 4).run()


# ---- memekit ema --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def snapshot_run(tmp_path_factory: pytest.TempPathFactory, memekit_cache: Path) -> Path:
    run = tmp_path_factory.mktemp("ema") / "run"
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMEKIT_CACHE", str(memekit_cache))
        tiny_trainer(run, images=8 * 6, posthoc_ema_every=2, val_images=8).run()
    return run


def test_memekit_ema_writes_runs_that_sample_and_keeps_the_best(snapshot_run: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "ema"
    code, stdout, err = cli("ema", snapshot_run, "--sigma-rel", "0.03", "0.05", "0.2", "--out", out, "--quiet")
    assert code == 0, err
    report = json.loads((out / "ema.json").read_text())
    scores = {k: v["val_loss"] for k, v in report["scores"].items()}
    assert set(scores) == {"0.030", "0.050", "0.200"}
    assert report["best_sigma_rel"] == float(min(scores, key=scores.get))
    assert report["baseline"]["ema_decay"] == 0.999 and "val_loss" in report["baseline"]
    assert f"best: sigma_rel {report['best_sigma_rel']:.3f} -> {out / 'best'}" in stdout
    # the tracked 0.05 is its newest snapshot; best is a run folder memekit sample reads
    model, _, state = load_model(out / "sigma-0.050")
    snapshot = list_snapshots(snapshot_run)[-2]
    assert (snapshot.step, snapshot.sigma_rel) == (6, 0.05)
    from safetensors.torch import load_file

    for name, value in load_file(snapshot.path).items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    assert json.loads(state["posthoc_ema"])["sigma_rel"] == 0.05
    code, _, err = cli("sample", out / "best", "--out", tmp_path / "s.npz", "--n", "2", "--steps", "2",
                       "--device", "cpu", "--quiet")
    assert code == 0, err
    assert np.load(tmp_path / "s.npz")["images"].shape == (2, 8, 8, 3)
    # a reconstruction holds no training state: memekit train refuses to resume it, in one line
    code, _, err = cli("train", (out / "best" / "spec.json"), "--data", DATA, "--out", out / "best", "--steps", "8",
                       "--batch", "8", "--device", "cpu", "--quiet")
    assert_one_line_error(code, err, contains="is a post-hoc EMA reconstruction (memekit ema), not a training state")


def test_the_sweep_keeps_the_length_its_scorer_ranks_first(snapshot_run: Path, tmp_path: Path) -> None:
    """A stand-in scorer (KID's place) that prefers sigma_rel near 0.12: best is 0.1, OUT/best holds its
    weights, and the fixed-decay EMA is scored with the same scorer."""
    def scorer(path: Path) -> dict[str, float]:
        state = load_checkpoint(path)
        sigma = json.loads(state["posthoc_ema"])["sigma_rel"] if "posthoc_ema" in state else 0.3
        return {"kid_mean": abs(sigma - 0.12)}

    result = posthoc_sweep(snapshot_run, [0.02, 0.1, 0.25], tmp_path / "ema", quality="kid", scorer=scorer,
                           metric="kid_mean")
    assert result.best_sigma_rel == 0.1 and result.baseline["kid_mean"] == pytest.approx(0.18)
    assert_same(load_checkpoint(tmp_path / "ema" / "best")["ema"],
                load_checkpoint(tmp_path / "ema" / "sigma-0.100")["ema"])
    assert [p.name for p in list_checkpoints(tmp_path / "ema" / "best")] == ["step-000000006.pt"]


@pytest.mark.parametrize(("args", "phrase"), [
    (("--sigma-rel", "0.3"), "sigma_rel must lie in (0, 0.2887)"),
    (("--sigma-rel", "0.1", "--step", "3"), "no snapshot at step 3"),
])
def test_memekit_ema_bad_input_is_one_line(snapshot_run: Path, tmp_path: Path, cli, args, phrase) -> None:
    code, _, err = cli("ema", snapshot_run, "--out", tmp_path / "ema", "--quiet", *args)
    assert_one_line_error(code, err, contains=phrase)
    assert not (tmp_path / "ema").exists()


def test_a_run_without_snapshots_is_one_line(tmp_path: Path, cli) -> None:
    tiny_trainer(tmp_path / "run", images=8 * 2).run()
    code, _, err = cli("ema", tmp_path / "run", "--sigma-rel", "0.1")
    assert_one_line_error(code, err, contains="holds no post-hoc EMA snapshots")
