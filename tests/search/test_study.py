"""In-process studies with a fake proxy training: reproducibility, budgets, OOM, NaN, retries.

The proxy training is replaced by :class:`FakeTrain` through the study's seams
(:class:`memekit.search.study.Seams`), whose validation loss is a fixed function of the spec (so TPE
gets real feedback) and which can raise the errors the proxy run raises. Every study is the ``tiny``
space on 128 built-in images in a temporary folder, with the
default journal storage.
"""

from __future__ import annotations

import functools
import gc
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from memekit.search.searchspace import load_search_space, suggest_spec
from memekit.search.study import (
    Seams,
    SearchConfig,
    SearchError,
    check_identity,
    open_study,
    prepare_study,
    search_config,
    stored_config,
)
from memekit.search.train import OutOfMemory, TrainConfig, TrainingDiverged, TrainResult
from memekit.search.workers import run_search, run_worker
from memekit.space import MemeSpec, spec_cost

# TPESampler(n_startup_trials=10) in make_sampler: trials 10.. are proposed by the TPE model
STARTUP_TRIALS = 10


def tiny_search(study_dir: Path, **fields: Any) -> SearchConfig:
    base: dict[str, Any] = dict(study_dir=str(study_dir), space="tiny", data="builtin:shapes:128", proxy_images=32,
                                proxy_batch=16, val_images=16, n_trials=3, warm_start=(), device="cpu")
    base.update(fields)
    return SearchConfig(**base)


def spec_loss(spec: MemeSpec) -> float:
    """A smooth stand-in for the proxy validation loss: best near a 30 % first interval, shares
    of 0.5 and p = 0.6 (any deterministic function of the spec gives TPE something to learn)."""
    T = spec.diffusion.timesteps
    shares = [s for e in spec.experts for s in e.attention_share]
    return (1.0 + abs(spec.boundaries[1] / T - 0.3) + 0.2 * sum(abs(s - 0.5) for s in shares)
            + 0.1 * sum(abs(p - 0.6) for p in spec.soft_assignment))


class FakeTrain:
    """Stands in for :func:`memekit.search.train.train`; records every call.

    ``fail(spec, call_index)`` may return an exception to raise instead of training.
    """

    def __init__(self, loss: Callable[[MemeSpec], float] = spec_loss,
                 fail: Callable[[MemeSpec, int], Exception | None] | None = None) -> None:
        self.loss, self.fail = loss, fail
        self.calls: list[MemeSpec] = []
        # speed only: the cost model (FlopCounterMode) is deterministic per spec
        self.seams = Seams(train=self, spec_cost=functools.lru_cache(maxsize=None)(spec_cost))

    def __call__(self, spec: MemeSpec, config: TrainConfig, run_dir: str | Path, *args: Any,
                 **kwargs: Any) -> TrainResult:
        self.calls.append(spec)
        error = self.fail(spec, len(self.calls) - 1) if self.fail else None
        if error is not None:
            raise error
        loss = self.loss(spec)
        return TrainResult(run_dir=Path(run_dir), steps=config.steps, images_seen=config.images,
                           images_per_expert=[config.images // spec.n_experts] * spec.n_experts,
                           val={"val_loss": loss, "val_loss_quarters": [loss] * 4}, checkpoint=None,
                           wall_time_s=0.0, train_images_per_s=1.0)


@pytest.fixture
def fake_train() -> Iterator[Callable[..., FakeTrain]]:
    """``fake_train(loss=..., fail=...)``: a FakeTrain, whose ``seams`` a study is run with."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    gc.freeze()  # speed only: the per-trial gc.collect() skips the objects that exist before the study
    yield FakeTrain
    gc.unfreeze()


def states(study: optuna.Study) -> dict[TrialState, int]:
    out: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state] = out.get(t.state, 0) + 1
    return out


def params_of(spec_params: dict[str, Any]) -> MemeSpec:
    return suggest_spec(optuna.trial.FixedTrial(spec_params), load_search_space("tiny"))


# ---- 1. reproducibility -----------------------------------------------------------------------
def _params_sequence(study_dir: Path, seed: int, loss: Callable[[MemeSpec], float], n_trials: int,
                     fake_train: Callable[..., FakeTrain]) -> list[dict[str, Any]]:
    fake = fake_train(loss=loss)
    study = run_search(tiny_search(study_dir, n_trials=n_trials, seed=seed), progress=False, seams=fake.seams)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n_trials
    return [t.params for t in trials]


def test_seeded_single_worker_study_is_reproducible(tmp_path: Path, fake_train) -> None:
    n = STARTUP_TRIALS + 1  # the last one comes from the TPE model
    first = _params_sequence(tmp_path / "a", 7, spec_loss, n, fake_train)
    again = _params_sequence(tmp_path / "b", 7, spec_loss, n, fake_train)
    assert again == first
    # the comparison can tell studies apart: another seed proposes other parameters ...
    other_seed = _params_sequence(tmp_path / "c", 8, spec_loss, 1, fake_train)
    assert other_seed[0] != first[0]
    # ... and TPE uses the feedback: other losses, same random start-up, other TPE proposals
    flipped = _params_sequence(tmp_path / "d", 7, lambda s: -spec_loss(s), n, fake_train)
    assert flipped[:STARTUP_TRIALS] == first[:STARTUP_TRIALS]
    assert flipped[STARTUP_TRIALS:] != first[STARTUP_TRIALS:]


def test_resumed_study_does_not_replay_earlier_proposals(tmp_path: Path, fake_train) -> None:
    """Rerunning the command with a larger --trials resumes the study; the restarted worker's
    sampler must not propose the parameters its seed proposed before the restart."""
    fake = fake_train()
    run_search(tiny_search(tmp_path, n_trials=3, seed=3), progress=False, seams=fake.seams)
    study = run_search(tiny_search(tmp_path, n_trials=6, seed=3), progress=False, seams=fake.seams, update=True)
    params = [json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False)]
    assert len(params) == 6
    assert len(set(params)) == 6, "a resumed worker replayed earlier proposals"


# ---- 2. budgets -------------------------------------------------------------------------------
def test_over_budget_candidates_never_train(tmp_path: Path, fake_train) -> None:
    fake = fake_train()
    study = run_search(tiny_search(tmp_path, n_trials=3, max_macs=1.0), progress=False, seams=fake.seams)
    assert fake.calls == []
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3
    for t in trials:
        assert t.state == TrialState.COMPLETE
        assert math.isinf(t.values[0]) and t.values[0] > 0
        assert t.constraints["budget"] > 0
        assert t.user_attrs["skipped"] == "over budget"
        assert t.user_attrs["macs_per_step"] / 1.0 - 1.0 == pytest.approx(t.constraints["budget"])
    assert study.best_trials == []


def test_budget_separates_cheap_and_expensive_candidates(tmp_path: Path, fake_train) -> None:
    fake = fake_train()
    space = load_search_space("tiny")
    common = {"boundary_u0": 0.5, "boundary_u1": 0.5, "p_e0": 0.8, "p_e1": 0.4}
    shares = {f"share_e{e}_s{s}": None for e in range(2) for s in range(space.base_expert.n_stages)}
    candidates = [{**common, **dict.fromkeys(shares, share)} for share in (0.0, 1.0)]
    macs = [spec_cost(params_of(p), 50).mean_macs_per_step for p in candidates]
    assert macs[0] != macs[1]
    cheap, dear = sorted(range(2), key=lambda i: macs[i])
    max_macs = math.sqrt(macs[0] * macs[1])  # strictly between the two
    config = tiny_search(tmp_path, n_trials=2, max_macs=max_macs)
    study = prepare_study(config, fake.seams)
    for params in candidates:
        study.enqueue_trial(params)
    run_worker(config, progress=False, seams=fake.seams)

    assert [c.experts for c in fake.calls] == [params_of(candidates[cheap]).experts]
    by_share = {t.params["share_e0_s0"]: t for t in study.get_trials(deepcopy=False)}
    cheap_trial, dear_trial = by_share[candidates[cheap]["share_e0_s0"]], by_share[candidates[dear]["share_e0_s0"]]
    assert cheap_trial.constraints["budget"] <= 0 and cheap_trial.values[0] == pytest.approx(
        spec_loss(params_of(candidates[cheap])))
    assert dear_trial.constraints["budget"] == pytest.approx(macs[dear] / max_macs - 1.0)
    assert dear_trial.state == TrialState.COMPLETE and math.isinf(dear_trial.values[0])
    assert [t.number for t in study.best_trials] == [cheap_trial.number]


# ---- 3. out of memory ---------------------------------------------------------------------------
def test_out_of_memory_is_infeasible_not_failed(tmp_path: Path, fake_train) -> None:
    fake = fake_train(fail=lambda spec, i: OutOfMemory("CUDA out of memory (simulated)") if i == 0 else None)
    study = run_search(tiny_search(tmp_path, n_trials=3), progress=False, seams=fake.seams)
    assert states(study) == {TrialState.COMPLETE: 3}  # no FAIL, and no retry of the OOM trial
    assert len(fake.calls) == 3
    oom = study.trials[0]
    assert oom.constraints["memory"] > 0
    assert math.isinf(oom.values[0])
    assert "out of memory" in oom.user_attrs["failure_reason"]
    assert "retry_of" not in study.trials[1].user_attrs
    fine = study.trials[1:]
    assert all(t.constraints["memory"] <= 0 and math.isfinite(t.values[0]) for t in fine)
    best = {t.number for t in study.best_trials}
    assert oom.number not in best and best  # the front holds feasible trials only


# ---- 4. NaN proxy -------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", ["multi", "single"])
def test_nan_proxy_is_pruned_with_reason(tmp_path: Path, fake_train, objective: str) -> None:
    fake = fake_train(fail=lambda spec, i: TrainingDiverged("loss is nan at step 3") if i == 1 else None)
    study = run_search(tiny_search(tmp_path, n_trials=3, objective=objective), progress=False, seams=fake.seams)
    assert states(study) == {TrialState.COMPLETE: 2, TrialState.PRUNED: 1}
    pruned = study.trials[1]
    assert pruned.state == TrialState.PRUNED
    assert "loss is nan" in pruned.user_attrs["failure_reason"]


# ---- 5. unexpected errors are retried -------------------------------------------------------------
def test_transient_error_is_failed_then_retried(tmp_path: Path, fake_train) -> None:
    fake = fake_train(fail=lambda spec, i: RuntimeError("flaky file system") if i == 0 else None)
    study = run_search(tiny_search(tmp_path, n_trials=3, max_retries=2), progress=False, seams=fake.seams)
    assert states(study) == {TrialState.FAIL: 1, TrialState.COMPLETE: 3}
    failed, retry = study.trials[0], study.trials[1]
    assert failed.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.params == failed.params
    assert retry.user_attrs["retry_of"] == failed.number and retry.user_attrs["retries"] == 1


def test_a_study_says_its_trials_to_say_not_to_stdout(tmp_path: Path, fake_train,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """With ``progress`` the trials' lines (a failed one included) go to the caller's ``say``."""
    fake = fake_train(fail=lambda spec, i: RuntimeError("flaky file system") if i == 0 else None)
    lines: list[str] = []
    run_search(tiny_search(tmp_path, n_trials=2), progress=True, seams=fake.seams, say=lines.append)
    assert capsys.readouterr().out == ""
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 3 and trial_lines[0].startswith("trial 0 fail (RuntimeError: flaky file system")
    assert trial_lines[-1].endswith("2/2 finished")


def test_persistent_error_is_retried_max_retries_times(tmp_path: Path, fake_train) -> None:
    bad: list[MemeSpec] = []

    def fail(spec: MemeSpec, i: int) -> Exception | None:
        if i == 0:
            bad.append(spec)
        return RuntimeError("kernel bug for this architecture") if spec == bad[0] else None

    fake = fake_train(fail=fail)
    max_retries = 2
    study = run_search(tiny_search(tmp_path, n_trials=3, max_retries=max_retries), progress=False,
                       seams=fake.seams)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 + max_retries
    assert all(t.params == failed[0].params for t in failed)
    assert [t.user_attrs.get("retries", 0) for t in failed] == list(range(max_retries + 1))
    assert [t.user_attrs.get("retry_of") for t in failed[1:]] == [t.number for t in failed[:-1]]
    assert not [t for t in study.trials if t.state == TrialState.WAITING]  # no further retry queued
    assert states(study)[TrialState.COMPLETE] == 3


# ---- the real proxy run ------------------------------------------------------------------------------
def test_one_trial_with_the_real_proxy_training(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = run_search(tiny_search(tmp_path, n_trials=1), progress=False)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    assert math.isfinite(trial.values[0]) and trial.values[0] == trial.user_attrs["val_loss"] > 0
    assert trial.values[1] == pytest.approx(trial.user_attrs["trajectory_gmacs"])
    assert trial.constraints == {"budget": -1.0, "memory": -1.0}
    spec, diffusion = (MemeSpec.from_json(trial.user_attrs["spec"]),
                       json.loads((tmp_path / "diffusion.json").read_text()))
    assert spec.diffusion.to_dict() == diffusion and diffusion["preconditioning"] == "wiener"  # the default
    assert spec.experts == params_of(trial.params).experts and spec.intervals == params_of(trial.params).intervals
    run_dir = tmp_path / "trials" / "trial-00000"
    assert run_dir.is_dir() and not (run_dir / "checkpoints").exists()  # proxy checkpoints dropped


@pytest.mark.parametrize("preconditioning", ["edm", "wiener"])
def test_val_rel_study_with_preconditioning(tmp_path: Path, preconditioning: str) -> None:
    """The study measures its preconditioning once (diffusion.json), every candidate carries it, and
    the objective is val_rel = mean over the grid of log(val loss / Wiener filter's loss)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = tiny_search(tmp_path, n_trials=1, quality="val-rel", preconditioning=preconditioning)
    study = run_search(config, progress=False)
    (trial,) = study.trials
    diffusion = json.loads((tmp_path / "diffusion.json").read_text())
    assert diffusion["preconditioning"] == preconditioning and diffusion["data_std"] > 0
    assert MemeSpec.from_json(trial.user_attrs["spec"]).diffusion.to_dict() == diffusion
    assert study.metric_names == ["val_rel", "trajectory_gmacs"]
    assert trial.values[0] == trial.user_attrs["val_rel"]
    per_expert = trial.user_attrs["val_rel_per_expert"]
    assert len(per_expert) == 2 and all(math.isfinite(v) for v in per_expert)
    assert trial.user_attrs["val_loss"] > 0
    with pytest.raises(SearchError, match="different preconditioning"):
        open_study(tiny_search(tmp_path, quality="val-rel", preconditioning="none"), seed=0)


def test_studies_made_before_a_setting_existed_resume(tmp_path: Path) -> None:
    """A study saved before preconditioning was a setting measured with none (the paper's network
    predicting eps directly): it resumes as that, not as today's default, wiener."""
    assert SearchConfig(study_dir="x").preconditioning == "wiener"
    prepare_study(tiny_search(tmp_path, preconditioning="none"))
    study = open_study(tiny_search(tmp_path, preconditioning="none"), seed=0)
    old = {k: v for k, v in study.user_attrs["memekit_config"].items() if k != "preconditioning"}
    study.set_user_attr("memekit_config", old)  # as written by memekit before preconditioning existed
    config_file = tmp_path / "search_config.json"
    config_file.write_text(json.dumps({k: v for k, v in json.loads(config_file.read_text()).items()
                                       if k != "preconditioning"}))
    assert stored_config(tmp_path).preconditioning == "none"
    assert search_config(tmp_path).preconditioning == "none"  # resuming by STUDY_DIR alone keeps it
    open_study(tiny_search(tmp_path, preconditioning="none"), seed=0)  # no error
    with pytest.raises(SearchError, match=r"different preconditioning \('none', this command gives 'wiener'\)"):
        open_study(tiny_search(tmp_path), seed=0)


# ---- opening a study ---------------------------------------------------------------------------
def test_opening_a_missing_study_is_a_one_line_error(tmp_path: Path) -> None:
    prepare_study(tiny_search(tmp_path, study_name="present"))
    with pytest.raises(SearchError, match="no study named 'absent'") as info:
        open_study(tiny_search(tmp_path, study_name="absent"), seed=0, create=False)
    assert "\n" not in str(info.value)


def test_resuming_with_another_configuration_is_refused(tmp_path: Path) -> None:
    prepare_study(tiny_search(tmp_path, proxy_images=32))
    with pytest.raises(SearchError, match="different proxy_images"):
        open_study(tiny_search(tmp_path, proxy_images=64), seed=0)


def test_a_data_path_given_another_way_is_the_same_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study made with an absolute data path resumes with a relative path to the same folder (and
    the reverse); another folder is still refused."""
    (tmp_path / "faces").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "work").mkdir()
    stored = tiny_search(tmp_path, data=str(tmp_path / "faces")).public_dict()
    monkeypatch.chdir(tmp_path / "work")
    check_identity(tiny_search(tmp_path, data="../faces"), stored)  # no error
    check_identity(tiny_search(tmp_path, data=str(tmp_path / "faces")),
                   tiny_search(tmp_path, data="../faces").public_dict())
    with pytest.raises(SearchError, match="different data"):
        check_identity(tiny_search(tmp_path, data="../other"), stored)
    with pytest.raises(SearchError, match="different data"):
        check_identity(tiny_search(tmp_path, data="builtin:shapes:128"), stored)


