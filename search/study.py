"""Optuna studies over the MEME design space: configuration, objective, workers, fault tolerance.

One study lives in a study folder (``STUDY_DIR``): ``search_config.json``, the journal file (unless
``--storage`` points elsewhere), ``prior_spec.json``, ``trials/trial-NNNNN/`` (proxy runs) and
``artifacts/`` (sample grids, visible in optuna-dashboard).

Objective: cheap checks first (a MACs/params budget via ``trial.set_constraint``; an over-budget
candidate never trains), then a proxy run of :func:`memekit.search.train.train` with the same data,
seed and image budget for every trial, then quality (validation loss or FID) and cost (trajectory
MACs or measured latency). Multi-objective (quality, cost) by default. **Optuna cannot prune
multi-objective studies**: pruners act only with ``--objective single``.

Fault tolerance: PostgreSQL studies use Optuna's heartbeat and ``RetryFailedTrialCallback``.
Journal studies get memekit's heartbeat (the worker stamps ``memekit:heartbeat`` on its running
trial every ``heartbeat_interval`` s) and a stale-trial sweep that fails a trial whose stamp is
older than ``grace_period`` and re-enqueues its parameters. Trials that raise an unexpected error
are retried up to ``max_retries`` times; out-of-memory is recorded as infeasible (constraint > 0);
a NaN proxy ends PRUNED with the reason in ``failure_reason``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from memekit.analysis.data import load_images
from memekit.analysis.priors import prior_spec
from memekit.space import (
    ExpertSpec,
    MemeSpec,
    get_preset,
    load_spec,
    save_spec,
    spec_cost,
    uniform_intervals,
)
from memekit.space.errors import MemekitError
from memekit.space.precondition import PRECONDITIONINGS

from .searchspace import SearchSpace, load_search_space, params_for, projection_gap, sample
from .storage import open_storage, redact_url, storage_kind
from .train import MIXED_PRECISION, OutOfMemory, TrainConfig, TrainingDiverged, train

OBJECTIVES = ("multi", "single")
QUALITIES = ("val", "val-rel", "kid", "fid")
COSTS = ("macs", "latency")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
PRUNERS = ("none", "median", "hyperband", "wilcoxon")
WARM_STARTS = ("prior", "meme-paper", "multi-same", "single-large", "single-small")
HEARTBEAT_KEY = "memekit:heartbeat"
# validation figures recorded on every trial (proxy objectives that fidelity can compare)
RECORDED_VALIDATION = ("val_loss", "val_loss_quarters", "val_rel", "val_rel_quarters", "val_rel_per_expert")
STORAGE_ENV = "MEMEKIT_STORAGE"  # default --storage; also how workers receive the URL with its password
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# group=True, set_metric_names and artifacts are "experimental" in Optuna 5; memekit pins optuna<6
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class SearchError(MemekitError, ValueError):
    """A study cannot be created, joined or run."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a study (saved as ``search_config.json`` and in the study)."""

    study_dir: str
    study_name: str = "memekit"
    storage: str | None = None
    space: str = "meme"
    resolution: int | None = None
    data: str = "builtin:shapes"
    n_trials: int = 20
    objective: str = "multi"
    quality: str = "val"
    preconditioning: str = "none"
    cost: str = "macs"
    sampler: str = "tpe"
    pruner: str = "none"
    max_macs: float | None = None  # budget on mean MACs per sampling step
    max_params: int | None = None  # budget on total parameters (all experts)
    sampling_steps: int = 50  # DDIM steps of the costed trajectory
    proxy_images: int = 10_000
    proxy_batch: int = 64
    proxy_lr: float = 2e-4
    proxy_warmup_images: int = 1_000
    val_images: int = 256
    val_every: int = 0  # proxy validation every K steps (single-objective pruning); 0 = at the end
    fid_n: int = 1000
    fid_steps: int = 50
    seed: int = 0
    workers: int = 1
    gpus: tuple[str, ...] | None = None
    machine_rank: int = 0
    warm_start: tuple[str, ...] = ("prior", "meme-paper", "multi-same")
    max_retries: int = 2
    heartbeat_interval: int = 30
    grace_period: int = 120
    device: str | None = None
    mixed_precision: str = "no"
    keep_proxy_checkpoints: bool = False

    def __post_init__(self) -> None:
        for name in ("gpus", "warm_start"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        choices = {"objective": OBJECTIVES, "quality": QUALITIES, "cost": COSTS, "sampler": SAMPLERS,
                   "pruner": PRUNERS, "mixed_precision": MIXED_PRECISION, "preconditioning": PRECONDITIONINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SearchError(f"unknown {name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name in ("n_trials", "workers", "proxy_images", "proxy_batch", "fid_n", "fid_steps", "sampling_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SearchError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.max_macs is not None and not (self.max_macs > 0 and math.isfinite(self.max_macs)):
            raise SearchError(f"max_macs must be a positive number of MACs per step, got {self.max_macs!r}")
        bad = [w for w in self.warm_start if w not in WARM_STARTS]
        if bad:
            raise SearchError(f"unknown warm start {bad[0]!r}: choose from {', '.join(WARM_STARTS)}")
        if self.pruner != "none" and self.objective == "multi":
            raise SearchError("Optuna cannot prune multi-objective studies: use --objective single with a pruner, "
                              "or --pruner none")
        storage_kind(self.storage)  # validates the scheme

    # keys that must match when a study is resumed or joined
    IDENTITY = ("space", "resolution", "data", "objective", "quality", "preconditioning", "cost", "max_macs",
                "max_params",
                "sampling_steps", "proxy_images", "proxy_batch", "proxy_lr", "proxy_warmup_images", "val_images",
                "fid_n", "fid_steps", "seed")

    def identity(self) -> dict[str, Any]:
        """The settings that must match when a study is resumed or joined (studies made before a
        setting existed stored no value for it: they count as its default)."""
        return {k: getattr(self, k) for k in self.IDENTITY}

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the storage password replaced by ``***`` (for files, studies, logs)."""
        data = self.to_dict()
        if data["storage"]:
            data["storage"] = redact_url(data["storage"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def run_device(self) -> str:
        """``device``, or cuda when this machine has it, else cpu."""
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def proxy_config(self, device: str | None = None) -> TrainConfig:
        """The proxy training every trial gets: same data, seed and image budget."""
        return TrainConfig(data=self.data, images=self.proxy_images, batch=self.proxy_batch, lr=self.proxy_lr,
                           warmup_images=self.proxy_warmup_images, seed=self.seed, val_images=self.val_images,
                           val_every=self.val_every, sample_every=0, sample_count=8, sample_steps=20, checkpoint_every=0,
                           keep_last=1, log_every=max(1, self.proxy_images // self.proxy_batch // 10),
                           mixed_precision=self.mixed_precision, device=device or self.device)

    def metric_names(self) -> list[str]:
        quality = {"val": "val_loss", "val-rel": "val_rel"}.get(self.quality, f"{self.quality}{self.fid_n}")
        cost = "trajectory_gmacs" if self.cost == "macs" else "trajectory_latency_ms"
        return [quality, cost] if self.objective == "multi" else [quality]


# ---- samplers and pruners ------------------------------------------------------------------------
def make_sampler(name: str, seed: int, constraints: bool = True) -> optuna.samplers.BaseSampler:
    """The sampler, always explicit and seeded (recorded in the study)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    return optuna.pruners.NopPruner()


def worker_seed(config: SearchConfig, index: int) -> int:
    """Distinct sampler seed per worker: ``seed + 1000 * machine_rank + index`` (a worker that
    joins or resumes a study with ``k`` ended trials adds ``100003 * k``, see :func:`run_worker`)."""
    return config.seed + 1000 * config.machine_rank + index


# ---- the study's space (with the measured preconditioning) -------------------------------------
DIFFUSION_FILE = "diffusion.json"


def study_space(config: SearchConfig, study_dir: Path | None) -> SearchSpace:
    """The study's search space: ``config.space`` at ``config.resolution``, with the diffusion spec
    of ``STUDY_DIR/diffusion.json`` (the measured preconditioning) when the study preconditions."""
    space = load_search_space(config.space, config.resolution)
    if config.preconditioning == "none":
        return space
    path = (study_dir or Path(config.study_dir)) / DIFFUSION_FILE
    if not path.is_file():
        raise SearchError(f"{path} is missing: the study's preconditioning statistics are made by "
                          "'memekit search' when it prepares the study; rerun it")
    from memekit.space import DiffusionSpec

    return dataclasses.replace(space, diffusion=DiffusionSpec.from_dict(json.loads(path.read_text())))


def measure_preconditioning(config: SearchConfig, study_dir: Path) -> None:
    """Write ``STUDY_DIR/diffusion.json``: the space's diffusion spec with ``config.preconditioning``
    and its statistics measured from (at most :data:`STATS_IMAGES` of) the training split."""
    path = study_dir / DIFFUSION_FILE
    if config.preconditioning == "none" or path.is_file():
        return
    from memekit.analysis.linear import STATS_IMAGES, preconditioned

    space = load_search_space(config.space, config.resolution)
    images = load_images(config.data, space.base_expert.resolution, split="train", limit=STATS_IMAGES,
                         progress=False)
    diffusion = preconditioned(space.diffusion, config.preconditioning, images)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(diffusion.to_dict(), indent=2) + "\n")
    tmp.replace(path)


# ---- the prior and the warm start -------------------------------------------------------------
def load_or_make_prior(config: SearchConfig, space: SearchSpace, study_dir: Path) -> MemeSpec:
    """The spectral prior spec of the training split, cached as ``prior_spec.json``."""
    path = study_dir / "prior_spec.json"
    if path.is_file():
        return load_spec(path)
    images = load_images(config.data, space.base_expert.resolution, split="train", limit=2048, progress=False)
    prior = prior_spec(images, space.n_experts[0], prior_base(space), min_length=space.min_length)
    save_spec(prior, path)
    return prior


def prior_base(space: SearchSpace) -> MemeSpec:
    """``meme-paper``'s p_n and out-of-interval rule on the space's architecture and diffusion: the
    base from which the spectral prior takes everything but its intervals and shares."""
    base = get_preset("meme-paper", space.base_expert.resolution)
    return dataclasses.replace(base, experts=(space.base_expert,) * base.n_experts, diffusion=space.diffusion)


def warm_start_specs(config: SearchConfig, space: SearchSpace, prior: MemeSpec | None) -> dict[str, MemeSpec]:
    """Baselines to enqueue first, each rebuilt on the space's base expert and resolution."""
    res = space.base_expert.resolution
    out: dict[str, MemeSpec] = {}
    for name in config.warm_start:
        if name == "prior":
            if prior is not None:
                out[name] = prior
            continue
        preset = _with_n_experts(get_preset(name, res), space)
        if preset is None:
            continue
        experts = tuple(_in_space(e, space) for e in preset.experts)
        out[name] = dataclasses.replace(preset, experts=experts, diffusion=space.diffusion)
    return out


def _in_space(expert: ExpertSpec, space: SearchSpace) -> ExpertSpec:
    """The space's architecture with the preset expert's shares, and its width when the space
    searches widths (otherwise single-large and single-small coincide in the space)."""
    shares = _fit_shares(expert.attention_share, space)
    nearest = min(space.width_choices, key=lambda w: abs(w - expert.base_width)) if space.width_choices else None
    return dataclasses.replace(space.base_expert, attention_share=shares,
                               base_width=nearest or space.base_expert.base_width)


def _with_n_experts(preset: MemeSpec, space: SearchSpace) -> MemeSpec | None:
    """A multi-expert preset re-cut to the space's N (experts and p_n taken evenly from the
    lowest- to the highest-noise one, uniform intervals); None when the space cannot hold it."""
    if preset.n_experts in space.n_experts:
        return preset
    if preset.n_experts == 1 or 1 in space.n_experts and len(space.n_experts) == 1:
        return None
    n = max(space.n_experts)
    pick = [round(i * (preset.n_experts - 1) / max(n - 1, 1)) for i in range(n)]
    return dataclasses.replace(preset, experts=tuple(preset.experts[i] for i in pick),
                               soft_assignment=tuple(preset.soft_assignment[i] for i in pick),
                               intervals=uniform_intervals(preset.diffusion.timesteps, n))


def _fit_shares(shares: tuple[float, ...], space: SearchSpace) -> tuple[float, ...]:
    """A preset's per-stage shares resampled to the space's stage count (first/last kept)."""
    n = space.base_expert.n_stages
    if len(shares) == n:
        return shares
    idx = [round(i * (len(shares) - 1) / max(n - 1, 1)) for i in range(n)]
    return tuple(shares[i] for i in idx)


def enqueue_warm_start(study: optuna.Study, config: SearchConfig, space: SearchSpace, prior: MemeSpec | None) -> None:
    for name, spec in warm_start_specs(config, space, prior).items():
        params = params_for(spec, space, prior)
        gap = projection_gap(spec, sample(optuna.trial.FixedTrial(params), space, prior))
        study.enqueue_trial(params, user_attrs={"warm_start": name, "projection_gap": gap}, skip_if_exists=True)


# ---- the objective ----------------------------------------------------------------------------------
class SurplusTrial(Exception):
    """The study already has its requested number of finished or running trials."""


class Objective:
    """``objective(trial) -> (quality, cost)`` (or ``quality`` in single-objective mode)."""

    def __init__(self, config: SearchConfig, space: SearchSpace, prior: MemeSpec | None, study_dir: Path,
                 artifact_store: optuna.artifacts.FileSystemArtifactStore | None = None,
                 sampler_seed: int | None = None) -> None:
        self.config, self.space, self.prior, self.study_dir = config, space, prior, study_dir
        self.sampler_seed = sampler_seed
        self.artifact_store = artifact_store
        self.device = config.run_device()

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self._check_surplus(trial)
        start = time.perf_counter()
        spec = sample(trial, self.space, self.prior)
        cost = spec_cost(spec, self.config.sampling_steps)
        trial.set_user_attr("spec", spec.to_json(indent=None))
        trial.set_user_attr("params_total", cost.params)
        trial.set_user_attr("macs_per_step", cost.mean_macs_per_step)
        trial.set_user_attr("trajectory_gmacs", cost.trajectory_macs / 1e9)
        trial.set_user_attr("environment", environment(self.device))
        trial.set_user_attr("seeds", {"proxy_training": self.config.seed, "sampler": self.sampler_seed})
        over = self._budget_violation(cost.mean_macs_per_step, cost.params)
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
        run_dir = self.study_dir / "trials" / f"trial-{trial.number:05d}"
        try:
            try:
                result = train(spec, self.config.proxy_config(self.device), run_dir, progress=False,
                               on_validation=self._pruning_callback(trial))
            except OutOfMemory as err:
                trial.set_user_attr("failure_reason", str(err))
                return None
            except TrainingDiverged as err:
                trial.set_user_attr("failure_reason", str(err))
                raise optuna.TrialPruned(str(err)) from None
            for key in RECORDED_VALIDATION:
                if key in result.val:
                    trial.set_user_attr(key, result.val[key])
            trial.set_user_attr("train_images_per_s", result.train_images_per_s)
            self._upload_grid(trial, run_dir)
            if self.config.quality in ("val", "val-rel"):
                return float(result.val["val_loss" if self.config.quality == "val" else "val_rel"])
            return self._sample_quality(trial, run_dir)
        finally:
            if not self.config.keep_proxy_checkpoints:
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

    def _upload_grid(self, trial: optuna.Trial, run_dir: Path) -> None:
        grids = sorted((run_dir / "samples").glob("*.png"))
        if self.artifact_store is None or not grids:
            return
        artifact_id = optuna.artifacts.upload_artifact(artifact_store=self.artifact_store, file_path=str(grids[-1]),
                                                       study_or_trial=trial, mimetype="image/png")
        trial.set_user_attr("sample_grid_artifact", artifact_id)

    def _sample_quality(self, trial: optuna.Trial, run_dir: Path) -> float:
        """KID or FID of ``fid_n`` DDIM-``fid_steps`` samples of the proxy against the data's reference
        split (both are recorded; reference features are cached by the metrics module)."""
        from memekit.analysis.fid import data_source

        from .metrics import sample_metrics

        result = sample_metrics(run_dir, data_source(self.config.data), n=self.config.fid_n,
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
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else platform.processor() or "cpu"
    return {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
            "memekit": memekit_version, "device": device, "device_name": name, "host": platform.node()}


# ---- heartbeat, stale trials and retries (journal storage) ------------------------------------------
class Heartbeat:
    """Stamp ``memekit:heartbeat`` on the running trial every ``interval`` s from a thread."""

    def __init__(self, study: optuna.Study, interval: float) -> None:
        self.study, self.interval = study, interval
        self._trial_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memekit-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def watch(self, trial_id: int | None) -> None:
        self._trial_id = trial_id
        if trial_id is not None:
            self._beat()

    def _beat(self) -> None:
        trial_id = self._trial_id
        if trial_id is None:
            return
        try:
            self.study._storage.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())
        except (RuntimeError, KeyError):  # the trial just finished
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def stop(self) -> None:
        self._stop.set()


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, max_retries: int, reason: str) -> bool:
    """Re-enqueue a failed trial's parameters unless it was retried ``max_retries`` times already."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= max_retries or trial.user_attrs.get("surplus"):
        return False
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("warm_start", "projection_gap")}
    study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number, "retries": retries + 1,
                                                  "retry_reason": reason})
    return True


def sweep_stale_trials(study: optuna.Study, grace_period: float, max_retries: int) -> list[int]:
    """Fail RUNNING trials whose heartbeat is older than ``grace_period`` s, and retry them.

    Exactly one sweeper wins each stale trial: failing an already-finished trial raises in Optuna.
    """
    swept = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = trial.system_attrs.get(HEARTBEAT_KEY)
        if last is None:
            last = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - float(last) <= grace_period:
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "failure_reason", "stale heartbeat: worker died")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (RuntimeError, KeyError, optuna.exceptions.UpdateFinishedTrialError):
            continue
        retry_trial(study, trial, max_retries, "stale heartbeat")
        swept.append(trial.number)
    return swept


def _retry_failed_callback(config: SearchConfig):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            retry_trial(study, trial, config.max_retries, "raised an error")
        elif trial.user_attrs.get("surplus") and trial.system_attrs.get("fixed_params"):
            # a queued trial drawn as surplus goes back to the queue, so nothing queued is lost
            study.enqueue_trial(trial.params, user_attrs={k: v for k, v in trial.user_attrs.items() if k != "surplus"})
    return callback


# ---- studies and workers ------------------------------------------------------------------------------
def open_study(config: SearchConfig, seed: int, create: bool = True) -> optuna.Study:
    """Create or load the study; refuse to resume one made with a different configuration."""
    study_dir = Path(config.study_dir)
    storage = open_storage(config.storage, study_dir, config.workers, config.heartbeat_interval,
                           config.grace_period, config.max_retries)
    sampler, pruner = make_sampler(config.sampler, seed), make_pruner(config.pruner)
    directions = ["minimize", "minimize"] if config.objective == "multi" else ["minimize"]
    try:
        if create:
            study = optuna.create_study(study_name=config.study_name, storage=storage, directions=directions,
                                        sampler=sampler, pruner=pruner, load_if_exists=True)
        else:
            study = optuna.load_study(study_name=config.study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise SearchError(f"no study named {config.study_name!r} in {redact_url(config.storage or str(study_dir))}") from None
    stored = study.user_attrs.get("memekit_config")
    if stored is None:
        study.set_user_attr("memekit_config", config.public_dict())
        study.set_metric_names(config.metric_names())
    else:
        defaults = SearchConfig(study_dir="").identity()  # settings newer than the study: their defaults
        wanted = json.loads(json.dumps(config.identity()))
        diff = [k for k in config.IDENTITY if stored.get(k, defaults[k]) != wanted[k]]
        if diff:
            raise SearchError(f"study {config.study_name!r} exists with a different {diff[0]} "
                              f"({stored.get(diff[0], defaults[diff[0]])!r}): use another --study-name or the "
                              "same settings")
    return study


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials, surplus trials excluded."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


def run_worker(config: SearchConfig, index: int = 0, progress: bool = True) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (several workers may share it)."""
    study_dir = Path(config.study_dir)
    study = open_study(config, worker_seed(config, index))
    done = len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL)))
    sampler_seed = worker_seed(config, index) + 100_003 * done
    if done:  # a resumed worker must not replay the proposals its seed made before the restart
        study.sampler = make_sampler(config.sampler, sampler_seed)
    space = study_space(config, study_dir)
    prior = load_spec(study_dir / "prior_spec.json") if (study_dir / "prior_spec.json").is_file() else None
    store = optuna.artifacts.FileSystemArtifactStore(str(_mkdir(study_dir / "artifacts")))
    objective = Objective(config, space, prior, study_dir, store, sampler_seed)
    journal = storage_kind(config.storage) == "journal"
    heartbeat = Heartbeat(study, config.heartbeat_interval).start() if journal else None
    callbacks = [_retry_failed_callback(config)]
    if heartbeat is not None:
        callbacks.append(lambda s, t: heartbeat.watch(None))

    def watched(trial: optuna.Trial):
        if heartbeat is not None:
            heartbeat.watch(trial._trial_id)
        return objective(trial)

    try:
        while True:
            if journal:
                sweep_stale_trials(study, config.grace_period, config.max_retries)
            finished, running = count_trials(study)
            if finished >= config.n_trials:
                break
            if finished + running >= config.n_trials:  # wait: a running trial may still die
                if not journal:  # Optuna fails (and retries) heartbeat-stale RDB trials only on request
                    optuna.storages.fail_stale_trials(study)
                time.sleep(min(5.0, config.heartbeat_interval))
                continue
            study.optimize(watched, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    finally:
        if heartbeat is not None:
            heartbeat.stop()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_study(config: SearchConfig) -> optuna.Study:
    """Create (or resume) the study: config file, prior spec, warm-start trials."""
    study_dir = _mkdir(Path(config.study_dir))
    config_file = study_dir / "search_config.json"
    tmp = config_file.with_name(".search_config.json.tmp")
    tmp.write_text(json.dumps(config.public_dict(), indent=2) + "\n")
    tmp.replace(config_file)
    study = open_study(config, worker_seed(config, 0))
    measure_preconditioning(config, study_dir)
    space = study_space(config, study_dir)
    needs_prior = "prior" in config.warm_start or space.boundary_mode == "prior"
    prior = load_or_make_prior(config, space, study_dir) if needs_prior else None
    if not study.trials:
        enqueue_warm_start(study, config, space, prior)
    return study


def cpu_threads_per_worker(config: SearchConfig) -> int | None:
    """Torch threads for each of several local CPU workers, so that together they use the cores once
    (oversubscribed torch threads slow every worker down several times); ``None`` (leave it to torch)
    for GPU workers or when the user set ``OMP_NUM_THREADS`` themselves."""
    if config.workers < 2 or not config.run_device().startswith("cpu") or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // config.workers)


def run_search(config: SearchConfig, progress: bool = True) -> optuna.Study:
    """Prepare the study, then run ``workers`` worker processes (in this process when 1)."""
    study = prepare_study(config)
    if config.workers == 1:
        if config.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = config.gpus[0]
        run_worker(config, 0, progress)
        return study
    procs = []
    config_file = Path(config.study_dir) / "search_config.json"
    threads = cpu_threads_per_worker(config)
    for i in range(config.workers):
        env = dict(os.environ)
        if threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        if config.storage:  # the password travels in the environment, never in a file
            env[STORAGE_ENV] = config.storage
        if config.gpus:
            env["CUDA_VISIBLE_DEVICES"] = config.gpus[i % len(config.gpus)]
        cmd = [sys.executable, "-m", "memekit.search.study", str(config_file), str(i)]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SearchError(f"worker(s) exited with codes {codes}: see their output above; rerun the same command "
                          "to resume the study")
    return study


def _worker_main(argv: list[str]) -> int:
    config = SearchConfig.from_dict(json.loads(Path(argv[0]).read_text()))
    if os.environ.get(STORAGE_ENV):
        config = dataclasses.replace(config, storage=os.environ[STORAGE_ENV])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(config, int(argv[1]), progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
