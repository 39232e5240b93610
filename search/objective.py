"""The objective of a study: ``objective(trial) -> (quality, cost)`` (``quality`` in single-objective mode).

Cheap checks first (a MACs/params budget via ``trial.set_constraint``; an over-budget candidate
never trains), then a proxy run of :func:`memekit.search.train.train` with the same data, seed and
image budget for every trial, then quality (validation loss, ``val_rel``, KID or FID) and cost
(trajectory MACs or measured latency). Out-of-memory is recorded as infeasible (constraint > 0) so
the sampler learns to avoid it; a NaN proxy ends PRUNED with the reason in ``failure_reason``.
"""

from __future__ import annotations

import math
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from memekit.analysis.device import device_name
from memekit.space import MemeSpec

from .artifacts import upload_trial_artifacts
from .searchspace import SearchSpace, suggest_spec
from .study import DEFAULT_SEAMS, FINISHED, Seams, SearchConfig
from .train import OutOfMemory, TrainingDiverged, TrainingInterrupted
from .validation import LOGGED_VALIDATION


class SurplusTrial(Exception):
    """The study already has its requested number of finished or running trials."""


class Objective:
    """``objective(trial) -> (quality, cost)`` (or ``quality`` in single-objective mode)."""

    def __init__(self, config: SearchConfig, space: SearchSpace, prior: MemeSpec | None, study_dir: Path,
                 artifact_store: optuna.artifacts.FileSystemArtifactStore | None = None,
                 sampler_seed: int | None = None, seams: Seams = DEFAULT_SEAMS) -> None:
        self.config, self.space, self.prior, self.study_dir = config, space, prior, study_dir
        self.sampler_seed, self.seams = sampler_seed, seams
        self.artifact_store = artifact_store
        self.device = config.run_device()

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self._check_surplus(trial)
        start = time.perf_counter()
        spec = suggest_spec(trial, self.space, self.prior)
        cost = self.seams.spec_cost(spec, self.config.sampling_steps)
        trial.set_user_attr("spec", spec.to_json(indent=None))
        trial.set_user_attr("params_total", cost.params)
        trial.set_user_attr("macs_per_step", cost.mean_macs_per_step)
        trial.set_user_attr("trajectory_gmacs", cost.trajectory_macs / 1e9)
        trial.set_user_attr("environment", environment(self.device))
        trial.set_user_attr("seeds", {"proxy_training": self.config.seed, "sampler": self.sampler_seed})
        over = self._budget_violation(cost.mean_macs_per_step, cost.params)
        if "budget" not in trial.constraints:  # a paused trial that resumes set it (to the same value) before
            trial.set_constraint("budget", over)
        if over > 0:  # cheap check first: an over-budget candidate never trains
            trial.set_user_attr("skipped", "over budget")
            trial.set_constraint("memory", -1.0)
            return self._values(math.inf, cost.trajectory_macs / 1e9)
        quality = self._proxy_quality(trial, spec)
        trial.set_constraint("memory", -1.0 if quality is not None else 1.0)
        if quality is None:  # out of memory: infeasible, so the sampler learns to avoid it
            return self._values(math.inf, cost.trajectory_macs / 1e9)
        cost_value = (cost.trajectory_macs / 1e9 if self.config.cost == "macs"
                      else self._latency_ms(trial, spec))
        trial.set_user_attr("wall_time_s", time.perf_counter() - start)
        return self._values(quality, cost_value)

    def _values(self, quality: float, cost: float) -> float | tuple[float, float]:
        return (quality, cost) if self.config.objective == "multi" else quality

    def _budget_violation(self, macs_per_step: float, params: int) -> float:
        """max over budgets of (value / limit - 1): <= 0 is feasible (Optuna's convention)."""
        ratios = [-1.0]
        if self.config.max_macs:
            ratios.append(macs_per_step / self.config.max_macs - 1.0)
        if self.config.max_params:
            ratios.append(params / self.config.max_params - 1.0)
        return max(ratios)

    def _check_surplus(self, trial: optuna.Trial) -> None:
        ahead = [t for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
                 if t.number < trial.number]
        if len(ahead) >= self.config.n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"the study already has {self.config.n_trials} trials")

    def _proxy_quality(self, trial: optuna.Trial, spec: MemeSpec) -> float | None:
        """The proxy run of ``trial`` in ``STUDY_DIR/trials/trial-NNNNN`` (a paused trial resumes it from its
        checkpoint: same folder, same settings, so the same result as an uninterrupted run); its quality,
        or None when it ran out of memory. The checkpoints are dropped at the end (unless
        ``keep_proxy_checkpoints``), never when a stop interrupted the run."""
        run_dir = self.study_dir / "trials" / f"trial-{trial.number:05d}"
        keep = self.config.keep_proxy_checkpoints
        try:
            try:
                # the trainer's lines (resuming, the data's compositing) are not printed per trial: the study said
                # what the data loader does once, and the trial's line says when it resumed
                result = self.seams.train(spec, self.config.proxy_config(self.device), run_dir, progress=False,
                                          on_validation=self._pruning_callback(trial), say=lambda line: None)
            except TrainingInterrupted:
                keep = True  # the study was stopped: the trial resumes from this checkpoint
                raise
            except OutOfMemory as err:
                trial.set_user_attr("failure_reason", str(err))
                return None
            except TrainingDiverged as err:
                trial.set_user_attr("failure_reason", str(err))
                raise optuna.TrialPruned(str(err)) from None
            for key in LOGGED_VALIDATION:
                if key in result.val:
                    trial.set_user_attr(key, result.val[key])
            trial.set_user_attr("train_images_per_s", result.train_images_per_s)
            if result.resumed_from is not None:
                trial.set_user_attr("proxy_resumed_from_step", result.resumed_from)
            upload_trial_artifacts(trial, self.artifact_store, run_dir, result.val, spec)
            if self.config.quality in ("val", "val-rel"):
                return float(result.val["val_loss" if self.config.quality == "val" else "val_rel"])
            return self._sample_quality(trial, run_dir)
        finally:
            if not keep:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)

    def _pruning_callback(self, trial: optuna.Trial):
        if self.config.objective == "multi" or self.config.pruner == "none":
            return None
        rounds = [0]

        def report(step: int, val: dict[str, Any]) -> None:
            if self.config.pruner == "wilcoxon":  # instances: (validation round, fixed t)
                base = rounds[0] * len(val["val_loss_per_t"])
                for k, loss in enumerate(val["val_loss_per_t"]):
                    trial.report(loss, base + k)
            else:
                trial.report(val["val_loss"], step)
            rounds[0] += 1
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (val loss {val['val_loss']:.4f})")

        return report

    def _sample_quality(self, trial: optuna.Trial, run_dir: Path) -> float:
        """KID or FID of ``fid_n`` DDIM-``fid_steps`` samples of the proxy against the data's reference
        split (both are recorded; reference features are cached by the metrics module)."""
        from memekit.analysis.fid import reference_source

        from .metrics import sample_metrics

        result = sample_metrics(run_dir, reference_source(self.config.data), n=self.config.fid_n,
                                steps=self.config.fid_steps, seeds=1, device=self.device)
        trial.set_user_attr("sample_metrics", result.to_dict())
        trial.set_user_attr(f"fid{self.config.fid_n}", result.fid_mean)
        trial.set_user_attr(f"kid{self.config.fid_n}", result.kid_mean)
        trial.set_user_attr("fid_weights", result.weights_label)
        return float(result.kid_mean if self.config.quality == "kid" else result.fid_mean)

    def _latency_ms(self, trial: optuna.Trial, spec: MemeSpec) -> float:
        from memekit.space import Diffusion, MultiExpert, measure_latency, sample_ddim

        model = MultiExpert(spec).to(self.device).eval()
        e = spec.experts[0]
        shape = (1, e.image_channels, e.resolution, e.resolution)
        diffusion = Diffusion(spec.diffusion)
        seconds = measure_latency(lambda: sample_ddim(model, diffusion, shape, steps=self.config.sampling_steps,
                                                      device=self.device), warmup=1, repeats=3, device=self.device)
        trial.set_user_attr("latency_device", environment(self.device)["device_name"])
        return seconds * 1e3


def environment(device: str) -> dict[str, Any]:
    """Library versions and device, recorded on every trial."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        memekit_version = version("memekit")
    except PackageNotFoundError:
        memekit_version = "unknown"
    name = device_name(device)
    return {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
            "memekit": memekit_version, "device": device, "device_name": name, "host": platform.node()}
