"""The trainer: learning, exact resume, soft interval assignment and budget, divergence handling."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_same, read_log, tiny_config, tiny_spec, tiny_trainer

from memekit.search.checkpoint import list_checkpoints, load_checkpoint
from memekit.search.sampling import load_model
from memekit.search.train import Trainer, TrainingDiverged, TrainingPaused, train
from memekit.search.validation import validation_loss, validation_timesteps


def test_short_run_lowers_validation_loss(tmp_path: Path) -> None:
    """30 steps at lr 1e-3 take the EMA's validation loss well below the untrained model's, and
    below 1, the loss of the zero predictor (E[eps^2] = 1 for eps ~ N(0, I))."""
    trainer = tiny_trainer(tmp_path / "run", images=16 * 30, batch=16, ema_decay=0.9, val_timesteps=8)
    trainer.load_data()
    # the EMA starts as a copy of the freshly initialised model (same seed -> same weights)
    before = validation_loss(trainer.ema.module, trainer.diffusion, trainer.val_images, 8)["val_loss"]
    result = trainer.run()
    after = result.val["val_loss"]
    assert result.steps == 30 and result.val["step"] == 30
    assert after < 0.8 * before, (before, after)
    assert after < 0.9, after
    logged = [r for r in read_log(tmp_path / "run") if r["event"] == "validation"]
    assert [r["step"] for r in logged] == [30] and logged[0]["val_loss"] == after


def test_ema_and_learning_rate_warm_up_follow_their_formulas(tmp_path: Path) -> None:
    """After update k (k = 0, 1, ...): ema = d_k ema + (1 - d_k) theta_k with
    d_k = min(decay, (1 + k) / (10 + k)), d_0 irrelevant (the first update copies); the learning
    rate of step s (0-based) is lr * min(1, (s + 1) / W) with W = warmup_images / batch = 4."""
    trainer = tiny_trainer(tmp_path / "run", images=8 * 3, ema_decay=0.999, warmup_images=8 * 4)
    trainer.load_data()
    weights, rates = [], []
    for _ in range(3):
        trainer.train_step()
        trainer.step += 1
        weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-3 / 4, 2e-3 / 4, 3e-3 / 4], rel=1e-12)
    assert int(trainer.ema.n_averaged) == 3
    d1, d2 = 2 / 11, 3 / 12
    ema = trainer.ema.module.state_dict()
    for key, theta in weights[2].items():
        expected = d2 * (d1 * weights[0][key] + (1 - d1) * weights[1][key]) + (1 - d2) * theta
        torch.testing.assert_close(ema[key], expected, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(weights[0]["experts.0.conv_in.weight"], weights[2]["experts.0.conv_in.weight"])


def test_validation_grid_is_midpoints_of_k_equal_bins() -> None:
    """t_k = floor((k + 1/2) T / K): for T = 1000, K = 4 the bin midpoints 125, 375, 625, 875."""
    assert validation_timesteps(1000, 4) == [125, 375, 625, 875]
    assert validation_timesteps(50, 5) == [5, 15, 25, 35, 45]


# ---- exact resume ---------------------------------------------------------------------------------
RESUME_FIELDS: dict[str, Any] = dict(batch=8, warmup_images=8 * 4, ema_decay=0.99, val_images=8,
                                     val_timesteps=2)
N_STEPS, K_STEPS = 6, 3


def _final_state(run_dir: Path) -> dict[str, Any]:
    state = load_checkpoint(run_dir)
    assert state["step"] == N_STEPS
    return state


def _assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert_same(a["model"], b["model"], "model")
    assert_same(a["ema"], b["ema"], "ema")
    assert_same(a["optimizer"], b["optimizer"], "optimizer")
    assert a["ema_updates"] == b["ema_updates"] == N_STEPS
    assert a["images_per_expert"] == b["images_per_expert"]


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    """k steps, a new process-like Trainer that auto-resumes, n - k steps == n straight steps:
    weights, EMA, AdamW state and the EMA update count (dropout 0.1, lr warm-up across the cut)."""
    spec = tiny_spec(dropout=0.1)
    straight = tiny_trainer(tmp_path / "straight", spec, images=8 * N_STEPS, checkpoint_every=K_STEPS,
                            keep_last=5, **RESUME_FIELDS)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in straight.model.modules())
    straight.run()

    # k steps (with the end-of-run validation and sample grid), then the same folder with budget n
    tiny_trainer(tmp_path / "cut", spec, images=8 * K_STEPS, **RESUME_FIELDS).run()
    # the budget grows from k to n steps: no --allow-config-change needed, and logged
    resumed = Trainer(spec, tiny_config(images=8 * N_STEPS, **RESUME_FIELDS), tmp_path / "cut", progress=False)
    resumed.run()
    events = resumed.history
    assert events[0]["event"] == "resumed" and events[0]["step"] == K_STEPS
    assert events[1] == {"event": "budget_changed", "step": K_STEPS, "images": [8 * K_STEPS, 8 * N_STEPS],
                         "steps": [K_STEPS, N_STEPS]}
    assert not [e for e in events if e["event"] == "config_changed"]
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(K_STEPS + 1, N_STEPS + 1))
    _assert_same_training_state(_final_state(tmp_path / "cut"), _final_state(tmp_path / "straight"))

    # an explicit resume from the straight run's mid-run checkpoint into a new folder
    middle = [p for p in list_checkpoints(tmp_path / "straight") if load_checkpoint(p)["step"] == K_STEPS]
    assert len(middle) == 1
    train(spec, tiny_config(images=8 * N_STEPS, **RESUME_FIELDS), tmp_path / "explicit", resume=middle[0],
          progress=False)
    _assert_same_training_state(_final_state(tmp_path / "explicit"), _final_state(tmp_path / "straight"))


def test_time_limit_pauses_with_a_checkpoint_and_resume_is_exact(tmp_path: Path) -> None:
    """A deadline that passes mid-run: checkpoint, TrainingPaused (exit code 0); the rerun without
    one ends bit-identical to a straight run."""
    spec = tiny_spec(dropout=0.1)
    tiny_trainer(tmp_path / "straight", spec, images=8 * N_STEPS, **RESUME_FIELDS).run()

    paused = Trainer(spec, tiny_config(images=8 * N_STEPS, **RESUME_FIELDS), tmp_path / "cut", progress=False,
                     deadline=1.0)
    original = paused.stop.requested

    def late_after_k(step: int) -> int:  # deadline=1.0 (1970) has long passed: seen from step K on
        return original(step) if step >= K_STEPS else 0

    paused.stop.requested = late_after_k
    with pytest.raises(TrainingPaused) as info:
        paused.run()
    assert info.value.exit_code == 0 and "rerun to resume" in str(info.value)
    assert [int(p.stem.split("-")[1]) for p in list_checkpoints(tmp_path / "cut")] == [K_STEPS]
    tiny_trainer(tmp_path / "cut", spec, images=8 * N_STEPS, **RESUME_FIELDS).run()
    _assert_same_training_state(_final_state(tmp_path / "cut"), _final_state(tmp_path / "straight"))


def test_different_seeds_give_different_weights(tmp_path: Path) -> None:
    """The resume test above would pass vacuously if training ignored its randomness."""
    a = tiny_trainer(tmp_path / "a", images=8 * 2, seed=0)
    b = tiny_trainer(tmp_path / "b", images=8 * 2, seed=1)
    a.run()
    b.run()
    assert not torch.equal(a.model.experts[0].conv_in.weight, b.model.experts[0].conv_in.weight)


# ---- soft interval assignment and the per-expert budget -------------------------------------------
def _record_expert_inputs(trainer) -> list[list[torch.Tensor]]:
    """Wrap each training expert's forward to record the t it is given (one tensor per call)."""
    seen: list[list[torch.Tensor]] = [[] for _ in trainer.model.experts]
    for n, expert in enumerate(trainer.model.experts):
        def forward(x: torch.Tensor, t: torch.Tensor, _n: int = n, _orig=expert.forward) -> torch.Tensor:
            assert len(x) == len(t)
            seen[_n].append(t.detach().clone())
            return _orig(x, t)

        expert.forward = forward
    return seen


@pytest.mark.parametrize(("boundaries", "p", "out_of_interval", "steps"), [
    ((0, 20, 50), (0.8, 0.3), "uniform-complement", 40),
    ((0, 10, 30, 50), (0.9, 0.5, 0.2), "uniform-all", 30),
], ids=["2-experts-complement", "3-experts-all"])
def test_soft_assignment_and_budget(tmp_path: Path, boundaries: tuple[int, ...], p: tuple[float, ...],
                                    out_of_interval: str, steps: int) -> None:
    """The t fed to expert n fall in its interval with probability q_n = p_n + (1 - p_n) w_n / T
    for uniform-all (w_n = interval width) and q_n = p_n for uniform-complement; checked against a
    4.5-sigma binomial bound. Each expert sees batch/N images per step, images/N in total."""
    n_experts = len(p)
    batch = 16 * n_experts
    spec = tiny_spec(boundaries, p, out_of_interval)
    trainer = tiny_trainer(tmp_path / "run", spec, images=batch * steps, batch=batch, log_every=20)
    seen = _record_expert_inputs(trainer)
    result = trainer.run()

    for n, (lo, hi) in enumerate(spec.intervals):
        assert len(seen[n]) == steps, "one forward per expert per step"
        assert all(len(t) == batch // n_experts for t in seen[n])
        t = torch.cat(seen[n])
        assert int(t.min()) >= 0 and int(t.max()) < spec.diffusion.timesteps
        inside = ((t >= lo) & (t < hi)).double().mean().item()
        q = p[n] + (1 - p[n]) * (hi - lo) / spec.diffusion.timesteps if out_of_interval == "uniform-all" else p[n]
        bound = 4.5 * math.sqrt(q * (1 - q) / len(t))
        assert abs(inside - q) <= bound, f"expert {n}: in-interval fraction {inside:.3f}, expected {q:.3f}"
        if out_of_interval == "uniform-complement":
            outside = t[(t < lo) | (t >= hi)]
            # the complement is reached on both sides where it exists
            assert (lo == 0 or bool((outside < lo).any())) and (hi == 50 or bool((outside >= hi).any()))

    assert result.images_seen == steps * batch
    assert result.images_per_expert == [steps * batch // n_experts] * n_experts
    last = [r for r in read_log(tmp_path / "run") if r["event"] == "train"][-1]
    assert last["images_per_expert"] == [steps * batch // n_experts] * n_experts
    assert load_checkpoint(tmp_path / "run")["images_per_expert"] == [steps * batch // n_experts] * n_experts


# ---- divergence -------------------------------------------------------------------------------------
def test_nan_loss_stops_with_step_and_interval(tmp_path: Path) -> None:
    """Expert 1's output turns NaN at its 5th call (step 5): TrainingDiverged names step 5, the
    interval [20, 50) and the last good checkpoint (step 4), which is intact and loads."""
    run_dir = tmp_path / "run"
    trainer = tiny_trainer(run_dir, images=8 * 20, checkpoint_every=2, keep_last=10)
    expert, calls = trainer.model.experts[1], []
    original = expert.forward

    def poisoned(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        out = original(x, t)
        return out + float("nan") if len(calls) == 5 else out

    expert.forward = poisoned
    with pytest.raises(TrainingDiverged) as caught:
        trainer.run()
    message = str(caught.value)
    assert "\n" not in message
    assert "at step 5 " in message and "[20, 50)" in message
    good = run_dir / "checkpoints" / "step-000000004.pt"
    assert str(good) in message
    assert list_checkpoints(run_dir) == [run_dir / "checkpoints" / f"step-{s:09d}.pt" for s in (2, 4)]

    state = load_checkpoint(good)
    assert state["step"] == 4 and state["ema_updates"] == 4
    for key in ("model", "ema"):
        assert all(bool(torch.isfinite(v).all()) for v in state[key].values()), key
    model, _, _ = load_model(good)
    x = torch.zeros(2, 3, 8, 8)
    assert bool(torch.isfinite(model(x, torch.tensor([1, 40]))).all())

