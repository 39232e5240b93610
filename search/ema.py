"""Post-hoc EMA: the weights of any EMA length, reconstructed after training from a few snapshots.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2),
section 3 and appendix C; ported from NVlabs/edm2 ``training/phema.py``. A **power-function EMA
profile** averages the weights seen up to time ``t`` with density

    p_{t,gamma}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),   0 <= tau <= t,

tracked during training by ``ema <- beta ema + (1 - beta) theta`` with
``beta = (1 - delta / t)^(gamma + 1)`` (``t`` the images seen after the step, ``delta`` the batch;
:func:`power_function_beta`). Its length is named by ``sigma_rel``, the profile's standard deviation
relative to ``t`` (:func:`gamma_to_sigma_rel`, :func:`sigma_rel_to_gamma`). Training stores
snapshots of two profiles (sigma_rel 0.05 and 0.10 by default) every ``posthoc_ema_every`` steps;
since every profile is a function in L2([0, inf)) whose inner products have a closed form
(:func:`power_function_inner_products`), the snapshots' combination closest to the profile of any
other (t, gamma) is a linear solve (:func:`solve_posthoc_coefficients`), and so are its weights.
The maths and the default lengths live in :mod:`memekit.search.ema_profiles` (torch-free).

Files. Snapshots: ``RUN_DIR/ema_snapshots/step-XXXXXXXXX-sigma-S.safetensors`` (one per step and
profile: the profile's parameters and the model's buffers, float32, tensors named as in the
MultiExpert's state dict; metadata: format ``memekit-ema-snapshot``, spec, config, step,
images_seen, sigma_rel, gamma, latent). Reconstructions (:func:`posthoc_sweep`, ``memekit ema``):
``OUT/sigma-S/`` and ``OUT/best/``, each a run folder holding one checkpoint whose ``model`` and
``ema`` are the reconstructed weights (so ``memekit sample``, ``fid`` and ``package`` read it), a
``posthoc_ema`` record, and no optimiser state (``memekit train`` refuses to resume one);
``OUT/ema.json`` holds the sweep's scores.

Tracking reads the parameters only: it draws no random numbers and writes no parameter, so a run
with snapshots trains to the same weights as one without.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memekit.space import MemeSpec
from memekit.space.errors import SpecError
from memekit.space.files import atomic_write, atomic_write_json, atomic_write_text

from .checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from .ema_profiles import (  # noqa: F401 - moved there (torch-free), re-exported
    DEFAULT_SIGMA_RELS,
    QUALITIES,
    SIGMA_REL_MAX,
    PosthocEMAError,
    check_sigma_rel,
    fixed_decay_sigma_rel,
    gamma_to_sigma_rel,
    power_function_beta,
    power_function_inner_products,
    profile_fit_error,
    sigma_rel_to_gamma,
    solve_posthoc_coefficients,
)

SNAPSHOT_DIR = "ema_snapshots"
SNAPSHOT_FORMAT = "memekit-ema-snapshot"
RECONSTRUCTION_FORMAT = "memekit-posthoc-ema"
_SNAPSHOT_NAME = re.compile(r"^step-(\d{9})-sigma-(\d+\.\d+)\.safetensors$")


# ---- tracking during training -------------------------------------------------------------------
class PowerFunctionEMA:
    """Power-function EMA profiles of ``model``'s parameters (one per ``sigma_rels``), updated after
    every optimiser step; reads the parameters, writes only its own tensors."""

    def __init__(self, model: torch.nn.Module, sigma_rels: Sequence[float]) -> None:
        self.sigma_rels = tuple(check_sigma_rel(s) for s in sigma_rels)
        if len(set(self.sigma_rels)) < 2:
            raise PosthocEMAError(f"post-hoc EMA tracks at least two different profiles, got sigma_rel "
                                  f"{list(self.sigma_rels)}")
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.names = [name for name, _ in model.named_parameters()]
        with torch.no_grad():
            self.emas = [[p.detach().clone() for p in model.parameters()] for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, t_next: int, t_delta: int) -> None:
        """After the step that brings the images seen to ``t_next`` (``t_delta`` in this step)."""
        params = [p.detach() for p in model.parameters()]
        for gamma, ema in zip(self.gammas, self.emas, strict=True):
            torch._foreach_lerp_(ema, params, 1.0 - power_function_beta(gamma, t_next, t_delta))

    @torch.no_grad()
    def weights(self, model: torch.nn.Module, profile: int) -> tuple[dict[str, torch.Tensor], list[str]]:
        """``model``'s state dict with its parameters replaced by profile ``profile``'s (on the CPU), and
        the names of the buffers (kept as the model has them)."""
        index = {id(p): i for i, p in enumerate(model.parameters())}
        ema, state, buffers = self.emas[profile], {}, []
        for name, value in model.state_dict(keep_vars=True).items():
            if id(value) not in index:
                buffers.append(name)
            source = ema[index[id(value)]] if id(value) in index else value
            state[name] = source.detach().to("cpu").contiguous()
        return state, buffers

    def state_dict(self) -> dict[str, Any]:
        return {"sigma_rels": json.dumps(list(self.sigma_rels)),
                "emas": [dict(zip(self.names, ema, strict=True)) for ema in self.emas]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stored = tuple(json.loads(state["sigma_rels"]))
        if stored != self.sigma_rels:
            raise PosthocEMAError(f"the checkpoint tracks post-hoc EMA profiles sigma_rel {list(stored)}, not "
                                  f"{list(self.sigma_rels)}")
        with torch.no_grad():
            for ema, saved in zip(self.emas, state["emas"], strict=True):
                for tensor, name in zip(ema, self.names, strict=True):
                    tensor.copy_(saved[name])


# ---- snapshot files -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """One stored snapshot: profile ``sigma_rel`` (exponent ``gamma``) after ``step`` steps, ``images_seen`` images."""

    path: Path
    step: int
    images_seen: int
    sigma_rel: float
    gamma: float


def snapshot_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR


def snapshot_path(run_dir: str | Path, step: int, sigma_rel: float) -> Path:
    return snapshot_dir(run_dir) / f"step-{step:09d}-sigma-{sigma_rel:.3f}.safetensors"


def save_snapshots(run_dir: str | Path, tracker: PowerFunctionEMA, model: torch.nn.Module,
                   metadata: dict[str, str], step: int, images_seen: int) -> list[Path]:
    """Every profile of ``tracker`` at ``step`` as a safetensors file (atomic); ``metadata``: spec,
    config and latent (JSON text) as in the checkpoints."""
    from safetensors.torch import save

    paths = []
    for i, (sigma_rel, gamma) in enumerate(zip(tracker.sigma_rels, tracker.gammas, strict=True)):
        weights, buffers = tracker.weights(model, i)
        meta = {**metadata, "format": SNAPSHOT_FORMAT, "version": "1", "step": str(step),
                "images_seen": str(images_seen), "sigma_rel": repr(sigma_rel), "gamma": repr(gamma),
                "buffers": json.dumps(buffers)}
        data = save(weights, meta)
        paths.append(atomic_write(snapshot_path(run_dir, step, sigma_rel), lambda f, d=data: f.write(d), fsync=True))
    return paths


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise PosthocEMAError(f"snapshot {path} cannot be read ({type(err).__name__}): delete it, or rerun the "
                              "training from its checkpoint before it") from None
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise PosthocEMAError(f"{path} is not a memekit post-hoc EMA snapshot (no format {SNAPSHOT_FORMAT!r})")
    return meta


def list_snapshots(run_dir: str | Path) -> list[Snapshot]:
    """The run's snapshots, by step then sigma_rel (their metadata read, not their tensors)."""
    folder = snapshot_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if _SNAPSHOT_NAME.match(path.name):
            meta = _read_metadata(path)
            found.append(Snapshot(path, int(meta["step"]), int(meta["images_seen"]), float(meta["sigma_rel"]),
                                  float(meta["gamma"])))
    return sorted(found, key=lambda s: (s.step, s.sigma_rel))


def drop_snapshots_after(run_dir: str | Path, step: int) -> list[Path]:
    """Delete the snapshots past ``step`` (a run resumed from ``step`` writes them again); returns them."""
    folder = snapshot_dir(run_dir)
    dropped = [p for p in folder.iterdir() if (m := _SNAPSHOT_NAME.match(p.name)) and int(m.group(1)) > step] \
        if folder.is_dir() else []
    for path in dropped:
        path.unlink(missing_ok=True)
    return dropped


# ---- reconstruction -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Reconstruction:
    """The weights of profile ``sigma_rel`` at ``step``, and how they were made."""

    sigma_rel: float
    gamma: float
    step: int
    images_seen: int
    weights: dict[str, torch.Tensor]
    snapshots: tuple[str, ...]  # file names, in the order of ``coefficients``
    coefficients: tuple[float, ...]
    fit_error: float  # relative L2 distance of the reconstructed profile from the wanted one (profile_fit_error)

    def record(self) -> dict[str, Any]:
        return {"format": RECONSTRUCTION_FORMAT, "sigma_rel": self.sigma_rel, "gamma": self.gamma, "step": self.step,
                "images_seen": self.images_seen, "snapshots": list(self.snapshots),
                "coefficients": list(self.coefficients), "fit_error": self.fit_error}


def snapshots_until(run_dir: str | Path, step: int | None = None) -> list[Snapshot]:
    """The snapshots a reconstruction at ``step`` (default: the newest snapshot's) combines: all up to it."""
    found = list_snapshots(run_dir)
    if not found:
        raise PosthocEMAError(f"{run_dir} holds no post-hoc EMA snapshots ({SNAPSHOT_DIR}/): train it with "
                              "--posthoc-ema-every K or --ema-snapshots N")
    steps = sorted({s.step for s in found})
    step = steps[-1] if step is None else step
    if step not in steps:
        raise PosthocEMAError(f"no snapshot at step {step:,} in {run_dir}: reconstruct at one of the snapshot steps "
                              f"({', '.join(f'{s:,}' for s in steps[-5:])}{' ...' if len(steps) > 5 else ''})")
    used = [s for s in found if s.step <= step]
    if len({s.sigma_rel for s in used}) < 2 and len(used) < 2:
        raise PosthocEMAError(f"{run_dir} holds one snapshot up to step {step:,}: a reconstruction needs several")
    return used


def reconstruct(run_dir: str | Path, sigma_rels: Sequence[float], step: int | None = None) -> list[Reconstruction]:
    """The weights of every profile ``sigma_rels`` at ``step`` (default: the newest snapshot), as
    EDM2's ``reconstruct_phema``: parameters are the coefficients' sums of the snapshots' (accumulated
    in float64), buffers are the newest snapshot's. Each snapshot is read once."""
    from safetensors.torch import load_file

    used = snapshots_until(run_dir, step)
    gammas, coef, fit = _solve(used, sigma_rels)
    t_out = used[-1].images_seen
    buffers = set(json.loads(snapshot_metadata(used[-1].path).get("buffers", "[]")))
    sums: list[dict[str, torch.Tensor]] = [{} for _ in gammas]
    for i, snap in enumerate(used):
        for name, value in load_file(snap.path).items():
            for j, out in enumerate(sums):
                if name in buffers or not value.is_floating_point():
                    out[name] = value  # the newest snapshot's, as EDM2 does
                else:
                    out[name] = out.get(name, 0.0) + float(coef[i, j]) * value.double()
    names = tuple(s.path.name for s in used)
    return [Reconstruction(float(s), g, used[-1].step, t_out,
                           {k: v if k in buffers or not v.is_floating_point() else v.float() for k, v in out.items()},
                           names, tuple(float(c) for c in coef[:, j]), fit[j])
            for j, (s, g, out) in enumerate(zip(sigma_rels, gammas, sums, strict=True))]


def _solve(used: Sequence[Snapshot], sigma_rels: Sequence[float]) -> tuple[list[float], np.ndarray, list[float]]:
    """For each length at the newest snapshot: its gamma, the snapshots' coefficients (in, out) and the
    reconstructed profile's relative L2 error."""
    gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
    t_in, gamma_in, t_out = [s.images_seen for s in used], [s.gamma for s in used], used[-1].images_seen
    coef = solve_posthoc_coefficients(t_in, gamma_in, [t_out] * len(gammas), gammas)
    return gammas, coef, [profile_fit_error(t_in, gamma_in, t_out, g, coef[:, j]) for j, g in enumerate(gammas)]


def snapshot_metadata(path: Path) -> dict[str, str]:
    """The metadata of one snapshot file (spec, config, latent, step, ...)."""
    return _read_metadata(Path(path))


def reconstruction_state(recon: Reconstruction, metadata: dict[str, str]) -> dict[str, Any]:
    """A checkpoint state (``memekit sample`` / ``fid`` / ``package`` read it) holding ``recon``'s weights
    as both ``model`` and ``ema``; the spec, config and latent come from the snapshots' ``metadata``."""
    n = check_spec(metadata).n_experts
    state = {"spec": metadata["spec"], "config": metadata.get("config", "{}"), "step": recon.step,
             "images_seen": recon.images_seen, "images_per_expert": [recon.images_seen // n] * n,
             "model": recon.weights, "ema": recon.weights, "ema_updates": 0, "val": "{}",
             "posthoc_ema": json.dumps(recon.record())}
    if metadata.get("latent"):
        state["latent"] = metadata["latent"]
    return state


def write_reconstruction(recon: Reconstruction, metadata: dict[str, str], folder: str | Path) -> Path:
    """``folder`` as a run folder of one checkpoint holding ``recon`` (spec.json, config.json,
    posthoc_ema.json, checkpoints/, weights/); a checkpoint of another step there is replaced."""
    folder = Path(folder)
    for old in list_checkpoints(folder):
        if old != checkpoint_path(folder, recon.step):
            old.unlink()
    atomic_write_text(folder / "spec.json", json.dumps(json.loads(metadata["spec"]), indent=2) + "\n")
    atomic_write_text(folder / "config.json", json.dumps(json.loads(metadata.get("config") or "{}"), indent=2) + "\n")
    atomic_write_json(folder / "posthoc_ema.json", recon.record())
    return save_checkpoint(reconstruction_state(recon, metadata), folder, keep_last=1)


def is_reconstruction(state: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint is a post-hoc EMA reconstruction (no training state)."""
    return "posthoc_ema" in state and "optimizer" not in state


# ---- the sweep ----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """Scores of every reconstructed length (``scores``: sigma_rel -> metric dict), the fixed-decay EMA
    of the run's checkpoint at the same step (``baseline``, None without one), the best length and
    where its weights are (``best_dir``)."""

    run_dir: str
    out: str
    step: int
    images_seen: int
    quality: str
    metric: str | None
    scores: dict[str, dict[str, Any]]
    baseline: dict[str, Any] | None
    best_sigma_rel: float | None
    best_dir: str | None
    snapshots: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_plan(run_dir: str | Path, sigma_rels: Sequence[float], out: str | Path | None = None,
               step: int | None = None) -> dict[str, Any]:
    """What :func:`posthoc_sweep` would reconstruct (checked; nothing read but metadata, nothing written)."""
    sigma_rels = _checked_list(sigma_rels)
    used = snapshots_until(run_dir, step)
    gammas, coef, fit = _solve(used, sigma_rels)
    return {"run": str(run_dir), "out": str(_out(run_dir, out)), "step": used[-1].step,
            "images_seen": used[-1].images_seen, "snapshots": len(used),
            "tracked_sigma_rels": sorted({s.sigma_rel for s in used}),
            "reconstructions": [{"sigma_rel": s, "gamma": g, "coefficient_abs_sum": float(np.abs(coef[:, j]).sum()),
                                 "fit_error": fit[j]}
                                for j, (s, g) in enumerate(zip(sigma_rels, gammas, strict=True))]}


def _checked_list(sigma_rels: Sequence[float]) -> list[float]:
    if not sigma_rels:
        raise PosthocEMAError("give at least one --sigma-rel to reconstruct")
    return sorted({check_sigma_rel(s) for s in sigma_rels})


def _out(run_dir: str | Path, out: str | Path | None) -> Path:
    return Path(out) if out is not None else Path(run_dir) / "ema"


def sigma_dir(out: str | Path, sigma_rel: float) -> Path:
    return Path(out) / f"sigma-{sigma_rel:.3f}"


Scorer = Callable[[Path], dict[str, Any]]


def posthoc_sweep(run_dir: str | Path, sigma_rels: Sequence[float], out: str | Path | None = None,
                  step: int | None = None, quality: str = "val", scorer: Scorer | None = None,
                  metric: str | None = None, say: Callable[[str], None] | None = None) -> SweepResult:
    """Reconstruct every length of ``sigma_rels`` at ``step`` into ``OUT/sigma-S`` (OUT defaults to
    ``RUN_DIR/ema``), score each and the run's fixed-decay EMA at that step with ``scorer`` (a run
    folder or checkpoint -> metrics; lower ``metric`` is better), copy the best to ``OUT/best`` and write
    ``OUT/ema.json`` (after every score, so an interrupted sweep keeps what it measured). ``quality``
    "none": reconstruct only. See :func:`validation_scorer` and :func:`kid_scorer`."""
    if quality not in QUALITIES:
        raise PosthocEMAError(f"unknown quality {quality!r}: use {', '.join(QUALITIES)}")
    sigma_rels = _checked_list(sigma_rels)
    out = _out(run_dir, out)
    recons = reconstruct(run_dir, sigma_rels, step)
    metadata = snapshot_metadata(snapshots_until(run_dir, step)[-1].path)
    result = SweepResult(str(run_dir), str(out), recons[0].step, recons[0].images_seen, quality, metric, {}, None,
                         None, None, len(recons[0].snapshots))
    for recon in recons:
        folder = sigma_dir(out, recon.sigma_rel)
        write_reconstruction(recon, metadata, folder)
        entry = {"gamma": recon.gamma, "folder": str(folder), "fit_error": recon.fit_error}
        if scorer is not None:
            entry.update(scorer(folder))
            _say(say, f"sigma_rel {recon.sigma_rel:.3f}: {metric} {entry[metric]:.5g} (profile reconstructed to "
                      f"{100 * recon.fit_error:.1f} % L2 error)")
        result.scores[f"{recon.sigma_rel:.3f}"] = entry
        atomic_write_json(out / "ema.json", result.to_dict())
    baseline = checkpoint_path(run_dir, result.step)
    if scorer is not None and baseline.is_file():
        decay = json.loads(metadata.get("config") or "{}").get("ema_decay")
        result.baseline = {"checkpoint": str(baseline), "ema_decay": decay, **scorer(baseline)}
        if decay is not None:
            result.baseline["sigma_rel"] = fixed_decay_sigma_rel(decay, int(load_checkpoint(baseline)["ema_updates"]))
    if scorer is not None:
        best = min(result.scores, key=lambda k: result.scores[k][metric])
        result.best_sigma_rel = float(best)
        result.best_dir = str(_copy_best(Path(result.scores[best]["folder"]), out / "best"))
    atomic_write_json(out / "ema.json", result.to_dict())
    return result


def validation_scorer(run_dir: str | Path, device: str | None = None, step: int | None = None,
                      say: Callable[[str], None] | None = None) -> Scorer:
    """Scores a run folder or checkpoint by the run's own validation loss (``val_loss``: its validation
    images, time-step grid and fixed noise, :func:`memekit.search.validation.validation_loss`)."""
    from memekit.analysis.data import load_data
    from memekit.analysis.device import resolve_device
    from memekit.space import Diffusion

    from .sampling import load_model
    from .train_config import TrainConfig
    from .validation import validation_loss

    metadata = snapshot_metadata(snapshots_until(run_dir, step)[-1].path)
    spec, config = check_spec(metadata), TrainConfig.from_dict(json.loads(metadata.get("config") or "{}"))
    device = resolve_device(device)
    images = torch.from_numpy(load_data(config.data, spec.experts[0].resolution, limit=config.val_images,
                                        split="reference", progress=False, background=config.background,
                                        say=say)).to(device)

    def score(path: Path) -> dict[str, Any]:
        model, model_spec, _ = load_model(path, device=device)
        val = validation_loss(model, Diffusion(model_spec.diffusion), images, config.val_timesteps)
        return {"val_loss": val["val_loss"], "val_loss_quarters": val["val_loss_quarters"]}

    return score


def kid_scorer(reference: str, n: int, steps: int, seeds: int, device: str | None = None,
               progress: bool = False) -> Scorer:
    """Scores a run folder or checkpoint by KID (and FID) of ``n`` DDIM-``steps`` samples over ``seeds``
    sampling seeds against ``reference`` (:func:`memekit.search.metrics.sample_metrics`, offline Inception)."""
    from .metrics import sample_metrics

    def score(path: Path) -> dict[str, Any]:
        m = sample_metrics(path, reference, n, steps=steps, seeds=seeds, device=device, progress=progress)
        return {"kid_mean": m.kid_mean, "kid_std": m.kid_std, "fid_mean": m.fid_mean, "fid_std": m.fid_std,
                "kid_per_seed": [s["kid_mean"] for s in m.per_seed], "n": n, "steps": steps, "seeds": seeds,
                "reference": reference, "weights_label": m.weights_label}

    return score


def _copy_best(source: Path, best: Path) -> Path:
    """``best`` becomes a copy of the run folder ``source`` (written beside it, then renamed into place)."""
    tmp = best.with_name(f".{best.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(best, ignore_errors=True)
    tmp.rename(best)
    return best


def _say(say: Callable[[str], None] | None, line: str) -> None:
    if say is not None:
        say(line)


def check_spec(metadata: dict[str, str]) -> MemeSpec:
    try:
        return MemeSpec.from_json(metadata["spec"])
    except (KeyError, SpecError) as err:
        raise PosthocEMAError(f"a snapshot holds no valid spec ({err})") from None
