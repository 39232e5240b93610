"""The trainer: any MemeSpec, trained with soft interval assignment under an image budget.

Budget accounting: every optimiser step sees ``batch`` images in total, split evenly over the N
experts (``batch / N`` each), so a 4-expert model and a single model given the same ``images``
see the same number of images in total; each expert sees ``images / N``. The log states both.

Each expert n draws its time-steps from :class:`~memekit.space.SoftIntervalSampler` (own
interval with probability p_n, otherwise the spec's out-of-interval distribution), its loss is
the mean MSE of its own sub-batch, and its gradient is clipped on its own (as if trained alone).

Latent data sets (:mod:`memekit.analysis.latents`) train like images: the experts see unit-scale
latents instead of images in [-1, 1] (never flipped: a flipped latent is not the latent of the
flipped image), the run records the latents' autoencoder and normalisation (``RUN_DIR/latents.json``
and every checkpoint), and sample grids are decoded when that autoencoder is available.

Reproducibility: all randomness of step k (data indices, flips, time-steps, noise, dropout) comes
from generators seeded with ``(seed, rank, k)``, so k steps + resume + (n - k) steps equals n
straight steps bit for bit on the CPU (weights, EMA and optimiser state).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel

from memekit.analysis.autoencoders import AutoencoderError
from memekit.analysis.data import (
    DEFAULT_BACKGROUND,
    check_data_for_spec,
    check_data_source,
    load_data,
    to_model_input,
)
from memekit.analysis.device import MIXED_PRECISION, autocast, resolve_device
from memekit.analysis.latents import LatentDecoder, autoencoder_cost, latent_decoder, latent_record
from memekit.analysis.linear import preconditioned_for_data
from memekit.space import Diffusion, MemeSpec, MultiExpert, SoftIntervalSampler, spec_cost
from memekit.space.files import atomic_write_json

from .checkpoint import checkpoint_spec, ema_weights_available, latest_checkpoint, save_checkpoint
from .control import STOP_SYNC_STEPS, Dist, StopControl, init_distributed
from .ema import PowerFunctionEMA, drop_snapshots_after, is_reconstruction, save_snapshots
from .runfolder import ResumePoint, RunFolder
from .sampling import sample_images, save_image_grid
from .status import TrainProgress
from .train_config import TrainConfig, TrainResult
from .train_errors import (
    OutOfMemory,
    TrainingDiverged,
    TrainingError,
    TrainingInterrupted,
    TrainingPaused,
)
from .validation import LOGGED_VALIDATION, linear_reference, validation_loss

__all__ = ["MIXED_PRECISION", "OutOfMemory", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged",
           "TrainingError", "TrainingInterrupted", "TrainingPaused", "check_budget", "dry_run", "ema_warmup_avg_fn",
           "learning_rate", "preflight", "step_seed", "train", "with_preconditioning"]


# ---- pieces ------------------------------------------------------------------------------------
def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for (seed, rank, step): every step's randomness is independent of the past."""
    return (((seed * 1_000_003 + rank) * 1_000_000_007) + step) % (2**63 - 1)


def ema_warmup_avg_fn(decay: float) -> Callable[..., None]:
    """``multi_avg_fn`` for AveragedModel: ema <- d ema + (1 - d) p, d = min(decay, (1+n)/(10+n))."""

    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = n_averaged.to(torch.float32)
        d = torch.clamp((1.0 + n) / (10.0 + n), max=decay)
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, torch._foreach_mul(params, 1.0 - d))

    return update


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_images`` then constant (budgets can be extended on resume)."""
    warmup_steps = config.warmup_images // config.batch
    if warmup_steps == 0:
        return config.lr
    return config.lr * min(1.0, (step + 1) / warmup_steps)


def with_preconditioning(spec: MemeSpec, mode: str | None, data: str,
                         background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> MemeSpec:
    """``spec`` preconditioned by ``mode``, its statistics measured as a study measures them
    (:func:`~memekit.analysis.linear.preconditioned_for_data`: the training split of ``data``,
    transparent pixels onto ``background``); unchanged when ``mode`` is None or already the spec's."""
    if mode is None:
        return spec
    check_data_source(data)
    if mode == spec.diffusion.preconditioning:
        return spec
    diffusion = preconditioned_for_data(spec.diffusion, mode, data, spec.experts[0].resolution, background)
    return dataclasses.replace(spec, diffusion=diffusion)


def check_budget(spec: MemeSpec, config: TrainConfig, world: int = 1) -> None:
    """The batch must split evenly over experts x processes."""
    per_step = world * spec.n_experts
    if config.batch % per_step:
        raise TrainingError(f"batch {config.batch} must be divisible by experts x processes = {per_step}")


def dry_run(spec: MemeSpec, config: TrainConfig) -> dict[str, Any]:
    """The resolved configuration and the cost of every expert, as printed by ``--dry-run``."""
    check_budget(spec, config)
    cost = spec_cost(spec, config.sample_steps)
    n = spec.n_experts
    return {
        "spec": spec.to_dict(),
        "config": config.to_dict(),
        "steps": config.steps,
        "images_total": config.steps * config.batch,
        "images_per_expert": config.steps * config.batch // n,
        "experts": [{"interval": list(c.interval), "params": c.params, "macs_per_forward": c.macs}
                    for c in cost.experts],
        "trajectory_macs": cost.trajectory_macs,
        "trajectory_steps": config.sample_steps,
        **_latent_cost(config.data, cost.trajectory_macs),
    }


def _latent_cost(data: str, trajectory_macs: int) -> dict[str, Any]:
    """For latent data: the latents' record and the autoencoder's cost next to the experts' (one decode
    per sampled trajectory); nothing for images."""
    record = latent_record(data)
    if record is None:
        return {}
    cost = autoencoder_cost(record)
    out: dict[str, Any] = {"latent": {k: record[k] for k in ("path", "shape", "resolution", "autoencoder")}, **cost}
    if cost["autoencoder_available"]:
        out["trajectory_macs_with_decode"] = trajectory_macs + cost["decode_macs_per_image"]
    return out


# ---- the training loop --------------------------------------------------------------------------
class TrainingState:
    """What one optimiser step changes: the experts, their EMA, the optimiser, the loss scaler and the
    counters, with their checkpoint form (:meth:`state_dict`). ``train_images`` (uint8 NHWC on the
    device) must be set before :meth:`train_step`."""

    def __init__(self, spec: MemeSpec, config: TrainConfig, device: torch.device, group: Dist) -> None:
        self.spec, self.config, self.device, self.dist = spec, config, device, group
        n, per_step = spec.n_experts, group.world * spec.n_experts
        check_budget(spec, config, group.world)
        if config.mixed_precision != "no" and device.type != "cuda":
            raise TrainingError(f"--mixed-precision {config.mixed_precision} needs a CUDA device: use 'no' on {device}")
        self.sub_batch = config.batch // per_step  # images per expert per process per step
        self.diffusion = Diffusion(spec.diffusion)
        self.sampler = SoftIntervalSampler(spec)
        torch.manual_seed(config.seed)  # the initial weights depend on the seed only
        self.model = MultiExpert(spec).to(device)
        self.channels_last = config.channels_last and device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.ema = AveragedModel(self.model, multi_avg_fn=ema_warmup_avg_fn(config.ema_decay))
        # post-hoc EMA profiles (memekit.search.ema): copies of the weights, no random draws
        self.posthoc = (PowerFunctionEMA(self.model, config.posthoc_ema_sigma_rels)
                        if config.posthoc_ema_every > 0 else None)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                           fused=device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.mixed_precision == "fp16")
        self.experts = self._wrap_experts()
        self.step, self.images_seen, self.images_per_expert = 0, 0, [0] * n  # images: all processes
        self.last_val: dict[str, Any] = {}
        self.latent = latent_record(config.data)  # the latent data's record; None for images

    def _wrap_experts(self) -> list[torch.nn.Module]:
        experts: list[torch.nn.Module] = list(self.model.experts)
        if self.config.compile:
            experts = [torch.compile(e) for e in experts]
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            experts = [DDP(e, device_ids=ids) for e in experts]
        return experts

    def _batch(self, gen: torch.Generator) -> torch.Tensor:
        total = self.sub_batch * self.spec.n_experts
        idx = torch.randint(0, len(self.train_images), (total,), generator=gen, device=self.device)
        x0 = to_model_input(self.train_images[idx])
        if self.config.hflip and self.latent is None:
            flip = torch.rand(total, generator=gen, device=self.device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        return x0

    # ---- one step -----------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        """One optimiser step; returns the per-expert losses (N,) as a tensor."""
        seed = step_seed(self.config.seed, self.dist.rank, self.step)
        torch.manual_seed(seed)  # dropout
        gen = torch.Generator(device=self.device).manual_seed(seed)
        x0 = self._batch(gen)
        t = torch.cat([self.sampler.sample(n, self.sub_batch, gen) for n in range(self.spec.n_experts)])
        noise = torch.randn(x0.shape, generator=gen, device=self.device)
        if self.channels_last:
            x0, noise = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise))
        for g in self.optimizer.param_groups:
            g["lr"] = learning_rate(self.config, self.step)
        losses = []
        with autocast(self.device, self.config.mixed_precision):
            for n, expert in enumerate(self.experts):
                rows = slice(n * self.sub_batch, (n + 1) * self.sub_batch)
                losses.append(self.diffusion.loss(expert, x0[rows], t[rows], noise[rows], weighted=True).mean())
        loss_vec = torch.stack(losses)
        self.scaler.scale(loss_vec.sum()).backward()
        self.scaler.unscale_(self.optimizer)
        if self.config.grad_clip > 0:
            for expert in self.model.experts:
                torch.nn.utils.clip_grad_norm_(expert.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update_parameters(self.model)
        if self.posthoc is not None:  # reads the weights only
            self.posthoc.update(self.model, self.images_seen + self.config.batch, self.config.batch)
        return loss_vec.detach()

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "config": json.dumps(self.config.to_dict()),
            "step": self.step,
            "images_seen": self.images_seen,
            "images_per_expert": list(self.images_per_expert),
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_updates": int(self.ema.n_averaged),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "val": json.dumps(self.last_val),
            **({"latent": json.dumps(self.latent)} if self.latent is not None else {}),
            **({"posthoc_ema_profiles": self.posthoc.state_dict()} if self.posthoc is not None else {}),
        }

    def load_data(self, progress: bool = False, say: Callable[[str], None] | None = None) -> None:
        """The training and validation images (or latents) on the device, and the validation's linear
        reference; one-line errors for data that cannot be read or does not fit the spec."""
        expert = self.spec.experts[0]
        res = expert.resolution
        check_data_for_spec(self.config.data, expert.image_channels, res)
        options = dict(progress=progress, background=self.config.background, say=say)
        train = load_data(self.config.data, res, limit=self.config.data_limit, split="train", **options)
        val = load_data(self.config.data, res, limit=self.config.val_images, split="reference", **options)
        self.train_images = torch.from_numpy(train).to(self.device)
        self.val_images = torch.from_numpy(val).to(self.device)
        self.reference = linear_reference(self.diffusion, train, val) if self.dist.main else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if is_reconstruction(state):
            raise TrainingError(f"{state['path']} is a post-hoc EMA reconstruction (memekit ema), not a training "
                                "state: resume in the run's own folder, or use a new --out folder")
        stored = checkpoint_spec(state)
        if stored.to_dict() != self.spec.to_dict():
            raise TrainingError(f"checkpoint {state['path']} was trained with a different spec "
                                f"({stored.name or 'unnamed'}): use a new --out folder or the same spec")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.module.load_state_dict(state["ema"])
        except RuntimeError:
            raise TrainingError(f"checkpoint {state['path']} does not fit the network its spec builds (written by "
                                "another memekit version?): use a new --out folder") from None
        self.ema.n_averaged.fill_(int(state["ema_updates"]))
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.images_seen = int(state.get("images_seen", self.step * self.config.batch))
        self.images_per_expert = [int(v) for v in state["images_per_expert"]]
        self.last_val = json.loads(state.get("val", "{}"))
        self._load_posthoc(state)

    def _load_posthoc(self, state: dict[str, Any]) -> None:
        """The post-hoc EMA profiles of the checkpoint; refused when tracking would start mid-run or with
        other lengths (a profile spans the whole run)."""
        if self.posthoc is None:
            return
        stored = state.get("posthoc_ema_profiles")
        if stored is None:
            raise TrainingError(f"{state['path']} was trained to step {self.step:,} without post-hoc EMA snapshots; "
                                "their profiles span the whole run: resume without --posthoc-ema-every / "
                                "--ema-snapshots, or train a new --out run with them")
        was = json.loads(stored["sigma_rels"])
        if tuple(was) != self.posthoc.sigma_rels:
            given = " ".join(f"{v:g}" for v in self.posthoc.sigma_rels)
            raise TrainingError(f"{state['path']} tracks post-hoc EMA profiles --posthoc-ema-sigma-rel "
                                f"{' '.join(f'{v:g}' for v in was)}, this command gives {given}: resume with "
                                "the run's (a profile spans the whole run)")
        self.posthoc.load_state_dict(stored)


class Trainer(TrainingState):
    """One training run in ``run_dir``: build, resume, loop, validate, sample, checkpoint."""

    def __init__(self, spec: MemeSpec, config: TrainConfig, run_dir: str | Path, progress: bool = True,
                 on_validation: Callable[[int, dict[str, Any]], None] | None = None,
                 deadline: float | None = None, say: Callable[[str], None] | None = None,
                 allow_config_change: bool = False) -> None:
        group = init_distributed()
        super().__init__(spec, config, resolve_device(config.device, group.local_rank), group)
        self.progress, self.on_validation = progress, on_validation
        self.say = say if group.main else None  # one-line messages (resuming, changed settings)
        self.allow_config_change = allow_config_change  # resume with another batch, lr, budget, ...
        self.folder = RunFolder(run_dir, group.main)
        self.stop = StopControl(group, self.device, deadline)  # deadline: time.time() to checkpoint and stop
        self.history: list[dict[str, Any]] = []
        self.resumed_from: int | None = None
        self.resumed_images = 0
        self._decoder: LatentDecoder | None = None
        self._no_decoder: str | None = None  # why a latent run's grids cannot be decoded
        self.clock = time.monotonic  # of the time rule of checkpoints (checkpoint_minutes)
        self._last_checkpoint = self.clock()
        self._point = ResumePoint()
        self._events: list[dict[str, Any]] = []  # found while resuming, logged once the folder is written

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    def load_data(self) -> None:
        super().load_data(self.progress and self.dist.main, self.say)

    def _check_finite(self, loss_vec: torch.Tensor) -> None:
        if bool(torch.isfinite(loss_vec).all()):
            return
        n = int((~torch.isfinite(loss_vec)).nonzero()[0, 0])
        lo, hi = self.spec.intervals[n]
        last = latest_checkpoint(self.run_dir)
        raise TrainingDiverged(
            f"loss is {float(loss_vec[n])} at step {self.step + 1} in interval [{lo}, {hi}) (expert {n}); "
            f"last good checkpoint: {last or 'none'}; lower --lr or --grad-clip, or use bf16 instead of fp16")

    def save_snapshots(self) -> list[Path]:
        """The post-hoc EMA profiles at this step (``RUN_DIR/ema_snapshots/``, :mod:`memekit.search.ema`)."""
        metadata = {"spec": self.spec.to_json(), "config": json.dumps(self.config.to_dict()),
                    **({"latent": json.dumps(self.latent)} if self.latent is not None else {})}
        return save_snapshots(self.run_dir, self.posthoc, self.model, metadata, self.step, self.images_seen)

    def checkpoint(self) -> Path | None:
        """Write the training state (and its EMA weights as safetensors) on the main process."""
        path = None
        if self.dist.main:
            path = save_checkpoint(self.state_dict(), self.run_dir, self.config.keep_last)
        self.dist.barrier()
        self._last_checkpoint = self.clock()
        return path

    def _checkpoint_time_due(self) -> bool:
        """Whether ``checkpoint_minutes`` passed since the last checkpoint (or this call's start); several
        processes agree every :data:`STOP_SYNC_STEPS` steps (the main process's clock decides)."""
        minutes = self.config.checkpoint_minutes
        if minutes <= 0:
            return False
        if self.dist.world > 1:
            if self.step % STOP_SYNC_STEPS:
                return False
            due = torch.tensor([int(self.clock() - self._last_checkpoint >= 60 * minutes)], device=self.device)
            dist.broadcast(due, src=0)
            return bool(due.item())
        return self.clock() - self._last_checkpoint >= 60 * minutes

    # ---- run folder and resume ----------------------------------------------------------------
    def prepare(self, resume: str | Path | None) -> None:
        """Find where the run goes on (``resume``, else the folder's newest readable checkpoint, else
        step 0), load that state and check it against this run's spec and settings; says what it
        found and writes nothing (see :meth:`start`)."""
        point = self._point = self.folder.resume_point(self.spec, resume, map_location=self.device)
        for path, why in point.unreadable:
            self._say(f"checkpoint {path.name} cannot be read ({why}): passed over, and set aside as "
                      f"{path.name}.unreadable")
        if point.state is not None:
            self._resume_from(point.state, bool(point.unreadable))
        else:
            self._begin_at_zero(point)
        self._events[:0] = [{"event": "checkpoint_unreadable", "step": self.step, "path": str(path), "reason": why}
                            for path, why in point.unreadable]
        if self.config.images % self.config.batch:
            self._say(f"the budget of {self.config.images:,} images is not a whole number of batches of "
                      f"{self.config.batch}: training {self.config.steps:,} steps = "
                      f"{self.config.steps * self.config.batch:,} images")

    def _resume_from(self, state: dict[str, Any], fell_back: bool) -> None:
        self.load_state_dict(state)  # another spec, or weights that do not fit: refused first
        stored = json.loads(state.get("config") or "{}")
        changes = self.folder.config_changes(stored, self.config.to_dict(), self.allow_config_change, state["path"])
        self.resumed_from, self.resumed_images = self.step, self.images_seen
        source = Path(state["path"])
        newest = ", the newest readable one" if fell_back else ""
        self._say(f"resuming {self.run_dir} from step {self.step:,} (checkpoint {source}{newest})")
        self._events.append({"event": "resumed", "from": str(source), "step": self.step})
        self._budget_change(stored)
        self._posthoc_stops(state)
        if changes:
            self._say("changed settings: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
            self._events.append({"event": "config_changed", "step": self.step,
                                 "changes": {k: list(v) for k, v in changes.items()}})

    def _budget_change(self, stored: dict[str, Any]) -> None:
        """Say and log a budget other than the checkpoint's (warm-up then a constant learning rate: a
        longer budget continues the same run)."""
        if "images" not in stored or "batch" not in stored:
            return
        old_steps, total = int(stored["images"]) // int(stored["batch"]), self.config.steps
        if old_steps == total or self.step >= total:
            return
        how = "extending" if total > old_steps else "shortening"
        self._say(f"{how} the budget from {old_steps:,} to {total:,} steps ({int(stored['images']):,} -> "
                  f"{self.config.images:,} images); the learning rate stays constant after its warm-up, so the "
                  "run goes on as one")
        self._events.append({"event": "budget_changed", "step": self.step,
                             "images": [int(stored["images"]), self.config.images], "steps": [old_steps, total]})

    def _posthoc_stops(self, state: dict[str, Any]) -> None:
        """A checkpoint that tracks post-hoc EMA profiles, resumed without them: refused unless allowed
        (then said and logged); the snapshots written so far stay usable."""
        if self.posthoc is not None or "posthoc_ema_profiles" not in state:
            return
        every = json.loads(state.get("config") or "{}").get("posthoc_ema_every")
        if not self.allow_config_change:
            raise TrainingError(f"{self.run_dir} tracks post-hoc EMA profiles (checkpoint {Path(state['path']).name}), "
                                f"this command gives no --posthoc-ema-every: resume with --posthoc-ema-every {every}, "
                                "or pass --allow-config-change to stop tracking them "
                                "(the snapshots so far stay usable)")
        self._say(f"post-hoc EMA tracking stops at step {self.step:,}: the snapshots up to it stay usable")
        self._events.append({"event": "posthoc_ema_stopped", "step": self.step})

    def _begin_at_zero(self, point: ResumePoint) -> None:
        if point.stored_config is not None:
            changes = self.folder.config_changes(point.stored_config, self.config.to_dict(),
                                                 self.allow_config_change, None)
            if changes:
                self._say("changed settings: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
                self._events.append({"event": "config_changed", "step": 0,
                                     "changes": {k: list(v) for k, v in changes.items()}})
        if point.started_over:
            self._say(f"starting over in {self.run_dir}: it holds no checkpoint (the last run stopped before its "
                      "first one), so training begins at step 0")
            self._events.insert(0, {"event": "started_over", "step": 0})

    def start(self) -> None:
        """Write the run folder (spec.json, config.json, the log cut back to the resumed step), set
        unreadable checkpoints aside and log what :meth:`prepare` found; only once the data is loaded."""
        self.folder.start(self.spec, self.config.to_dict(), self.step, self._point.unreadable)
        if self.dist.main and (dropped := drop_snapshots_after(self.run_dir, self.step)):
            self._say(f"removed {len(dropped)} post-hoc EMA snapshot(s) past step {self.step:,}, written after "
                      "the checkpoint this run goes on from (they are written again on the way)")
        for event in self._events:
            self.log_event(event)
        self._events = []
        if self.latent is not None and self.dist.main:
            atomic_write_json(self.run_dir / "latents.json", self.latent)
            if self.config.hflip:
                self._say("latent data: no horizontal flips (a flipped latent is not the latent of the flipped image)")
        if self.dist.main and not ema_weights_available():
            self._say("the safetensors package is not installed: EMA weights are kept only inside the .pt "
                      "checkpoints (pip install safetensors to get RUN_DIR/weights/*.ema.safetensors)")

    def _nothing_to_train(self, total: int) -> None:
        if self.step > total:
            self._say(f"{self.run_dir} was trained to step {self.step:,} ({self.images_seen:,} images), beyond this "
                      f"budget of {total:,} steps ({self.config.images:,} images): nothing to train (give a larger "
                      "--images or --steps to train on)")
        self.log_event({"event": "complete", "step": self.step, "note": "budget already reached"})

    def _say(self, line: str) -> None:
        if self.say is not None:
            self.say(line)

    def log_event(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.folder.append_log(record)

    # ---- periodic work -------------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        self.ema.module.eval()
        with autocast(self.device, self.config.mixed_precision):
            val = validation_loss(self.ema.module, self.diffusion, self.val_images, self.config.val_timesteps,
                                  reference=self.reference, intervals=self.spec.intervals)
        self.last_val = {**val, "step": self.step}
        self.log_event({"event": "validation", "step": self.step, "images_seen": self.images_seen,
                        **{k: val[k] for k in LOGGED_VALIDATION if k in val}})
        if self.on_validation is not None:
            self.on_validation(self.step, self.last_val)
        return val

    def grid_decoder(self) -> LatentDecoder | None:
        """The decoder of a latent run's sample grids (loaded once); None, said and logged once, when
        its autoencoder is not available."""
        if self._decoder is None and self._no_decoder is None:
            try:
                self._decoder = latent_decoder(self.latent, device=self.device)
            except AutoencoderError as err:
                self._no_decoder = str(err)
                self._say(f"no sample grids: {err}")
                self.log_event({"event": "no_sample_grids", "step": self.step, "reason": str(err)})
        return self._decoder

    def sample_grid(self) -> Path | None:
        decoder = self.grid_decoder() if self.latent is not None else None
        if self.latent is not None and decoder is None:
            return None
        images = sample_images(self.ema.module, self.spec, self.config.sample_count, steps=self.config.sample_steps,
                               seed=0, device=self.device, batch=self.config.sample_count,
                               mixed_precision=self.config.mixed_precision, progress=False, decoder=decoder)
        return save_image_grid(images, self.run_dir / "samples" / f"step-{self.step:09d}.png")

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    # ---- loop ----------------------------------------------------------------------------------------
    def run(self, resume: str | Path | None = None) -> TrainResult:
        """Resume or begin, load the data, then (only then) write the run folder, and train to the budget."""
        self.prepare(resume)
        total = self.config.steps
        start_time = time.perf_counter()
        if self.step >= total:
            self._nothing_to_train(total)
            return self._result(start_time, latest_checkpoint(self.run_dir))
        self.load_data()  # unreadable data stops the run before anything is written
        self.start()
        self._last_checkpoint = self.clock()
        bar = TrainProgress(total, self.step, self.progress and self.dist.main)
        window = torch.zeros(self.spec.n_experts, device=self.device)
        window_steps, window_start = 0, time.perf_counter()
        with self.stop.handling_signals():
            while self.step < total:
                request = self.stop.requested(self.step)
                if request:  # a signal or the deadline: checkpoint, then stop
                    bar.close()
                    raise self.stop.error(request, self.step, self.checkpoint())
                loss_vec = self._guarded_step()
                self.step += 1
                self.images_seen += self.config.batch
                self.images_per_expert = [v + self.sub_batch * self.dist.world for v in self.images_per_expert]
                window += loss_vec
                window_steps += 1
                bar.update()
                if self._due(self.config.log_every) or self.step == total:
                    self._log_train(window / window_steps, window_steps, window_start, bar)
                    window.zero_()
                    window_steps, window_start = 0, time.perf_counter()
                self._periodic(total)
        bar.close()
        path = self.checkpoint()
        return self._result(start_time, path)

    def _guarded_step(self) -> torch.Tensor:
        try:
            loss_vec = self.train_step()
        except torch.cuda.OutOfMemoryError:
            self.optimizer.zero_grad(set_to_none=True)
            raise OutOfMemory(f"out of memory at step {self.step + 1} with batch {self.config.batch} on "
                              f"{self.device}: use a smaller --batch (or --mixed-precision bf16)") from None
        self._check_finite(loss_vec)
        return loss_vec

    def _periodic(self, total: int) -> None:
        final = self.step == total
        if self.posthoc is not None and self.dist.main and (self._due(self.config.posthoc_ema_every) or final):
            self.save_snapshots()
        if self.dist.main and (self._due(self.config.val_every) or final):
            self.validate()
        if self.dist.main and (self._due(self.config.sample_every) or final):
            self.sample_grid()
        if not final and (self._due(self.config.checkpoint_every) or self._checkpoint_time_due()):
            self.checkpoint()

    def _log_train(self, mean_losses: torch.Tensor, steps: int, since: float, bar: TrainProgress) -> None:
        losses = [float(v) for v in mean_losses]
        ips = steps * self.config.batch / max(time.perf_counter() - since, 1e-9)
        record = {"event": "train", "step": self.step, "images_seen": self.images_seen,
                  "images_per_expert": list(self.images_per_expert), "loss": sum(losses) / len(losses),
                  "loss_per_interval": losses, "lr": learning_rate(self.config, self.step - 1), "images_per_s": ips}
        self.log_event(record)
        bar.log(self.step, record["images_seen"], min(self.images_per_expert), record["loss"], record["lr"], ips)

    def _result(self, start_time: float, path: Path | None) -> TrainResult:
        wall = time.perf_counter() - start_time
        images = self.images_seen - self.resumed_images
        self.dist.barrier()
        return TrainResult(self.run_dir, self.step, self.images_seen, list(self.images_per_expert),
                           dict(self.last_val), path, wall, images / wall if images and wall > 0 else 0.0,
                           self.history, self.resumed_from, images)


def train(spec: MemeSpec, config: TrainConfig, run_dir: str | Path, resume: str | Path | None = None,
          progress: bool = True, on_validation: Callable[[int, dict[str, Any]], None] | None = None,
          deadline: float | None = None, say: Callable[[str], None] | None = None,
          allow_config_change: bool = False) -> TrainResult:
    """Train ``spec`` under ``config`` into ``run_dir`` (resuming automatically); see :class:`Trainer`.

    ``progress``: a bar on a terminal, else a status line every ``log_every`` steps on stderr.
    ``deadline`` (a ``time.time()`` value): past it, write a checkpoint and raise
    :class:`TrainingPaused`, for bounded chunks on time-limited allocations. ``say`` receives
    one-line messages (``resuming RUN_DIR from step N (checkpoint ...)``, ``starting over ...``).
    Resuming with other training settings than the checkpoint's (batch, learning rate, data, seed,
    ...; see :data:`~memekit.search.runfolder.TRAINED_KEYS`) raises :class:`TrainingError` unless
    ``allow_config_change`` (the change is logged); a larger budget continues the run (logged), and
    one at or below the trained step trains nothing. An unreadable newest checkpoint is passed over
    for the newest readable one (said, logged, and set aside as ``NAME.unreadable``). Nothing is
    written before the data is loaded. A checkpoint is written every ``checkpoint_every`` steps and
    once ``checkpoint_minutes`` passed since the last one, at a pause and at the end."""
    return Trainer(spec, config, run_dir, progress=progress, on_validation=on_validation, deadline=deadline,
                   say=say, allow_config_change=allow_config_change).run(resume)


# ---- the dry run that checks -----------------------------------------------------------------------
def preflight(spec: MemeSpec, config: TrainConfig, run_dir: str | Path | None = None,
              resume: str | Path | None = None, allow_config_change: bool = False) -> dict[str, Any]:
    """Everything :func:`train` checks before its first step, with nothing written and nothing trained:
    the budget, the device and precision (the model is built there), the run folder's state (new, resumed
    from step N, started over, trained past the budget; another spec or changed settings raise the run's
    own one-line :class:`TrainingError`), and the data (loaded as the run loads it: readable, not empty;
    not when there is nothing to train, as the run). Returns :func:`dry_run`'s plan with ``checks``."""
    plan = dry_run(spec, config)
    check_data_source(config.data)
    said: list[str] = []
    folder: dict[str, Any] = {"state": "none", "path": None}
    if run_dir is None:
        state: TrainingState = TrainingState(spec, config, resolve_device(config.device), init_distributed())
    else:
        state = trainer = Trainer(spec, config, run_dir, progress=False, say=said.append,
                                  allow_config_change=allow_config_change)
        trainer.prepare(resume)
        folder = _folder_state(trainer)
    data: dict[str, Any] | None = None
    if folder["state"] != "complete":
        TrainingState.load_data(state, say=said.append)  # no progress bar
        data = {"train": len(state.train_images), "validation": len(state.val_images),
                "shape": list(state.train_images.shape[1:])}
    plan["checks"] = {"device": str(state.device), "mixed_precision": config.mixed_precision, "data": data,
                      "run_folder": folder, "messages": said,
                      "posthoc_ema": _posthoc_plan(config, sum(e["params"] for e in plan["experts"]))}
    return plan


def _folder_state(trainer: Trainer) -> dict[str, Any]:
    path, events = str(trainer.run_dir), {e["event"] for e in trainer._events}
    if trainer.resumed_from is not None:
        state = "complete" if trainer.step >= trainer.config.steps else "resume"
        return {"state": state, "path": path, "step": trainer.step, "images_seen": trainer.images_seen,
                "checkpoint": trainer._point.state["path"], "changed": sorted(events - {"resumed"})}
    state = "start_over" if "started_over" in events else "new"
    return {"state": state, "path": path, "step": 0, "exists": trainer.run_dir.exists(),
            "changed": sorted(events - {"started_over"})}


def _posthoc_plan(config: TrainConfig, params: int) -> dict[str, Any] | None:
    every = config.posthoc_ema_every
    if every == 0:
        return None
    count = config.steps // every + (1 if config.steps % every else 0)  # and one at the end
    profiles = len(config.posthoc_ema_sigma_rels)
    return {"every": every, "sigma_rels": list(config.posthoc_ema_sigma_rels), "snapshots_per_profile": count,
            "bytes": count * profiles * params * 4}
