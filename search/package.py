"""``memekit package RUN OUT``: a trained run as a folder that diffusers loads.

OUT holds

- ``model_index.json``, ``scheduler/`` and one folder per expert, ``expert_0`` (lowest noise) ..
  ``expert_{N-1}``, each ``config.json`` + ``diffusion_pytorch_model.safetensors`` with the EMA weights
  (:mod:`memekit.search.pipeline`; ``MemePipeline.from_pretrained(OUT)`` samples what ``memekit sample``
  samples from RUN);
- ``pipeline.py``, a two-line entry point that imports :class:`MemePipeline` from the installed memekit,
  so that ``DiffusionPipeline.from_pretrained(OUT, custom_pipeline=OUT, trust_remote_code=True)``
  loads the folder too (the networks' code is memekit's: the folder needs ``memekit[diffusers]`` installed);
- ``README.md``, the model card (:mod:`memekit.search.model_card`), whose YAML front matter is also
  written as ``memekit.json``;
- ``spec.json``, the MemeSpec (``memekit train OUT/spec.json ...`` trains it again).

A model of autoencoder latents records its autoencoder (kind, folder, fingerprint) and the latents'
normalisation in ``model_index.json`` (``latent``); the autoencoder itself is not copied. The folder is
written next to OUT under a temporary name and renamed into place when complete. diffusers is an
optional dependency: it is imported only here, after the arguments are checked.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memekit.space import MemeSpec
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_json, atomic_write_text

from .checkpoint import (
    CheckpointError,
    checkpoint_latent,
    checkpoint_spec,
    list_checkpoints,
    load_checkpoint,
)
from .model_card import MetricsFileError, card_metadata, metrics_entries, render_model_card

INSTALL_HINT = "pip install memekit[diffusers]"
DEFAULT_STEPS = 50  # memekit sample's default
MAX_EXPERTS = 8  # memekit.search.pipeline.MAX_EXPERTS, kept here so the checks need no diffusers


class PackageError(MemekitError, ValueError):
    """``memekit package`` cannot use its arguments (one line: what is wrong and what to do)."""


@dataclass(frozen=True)
class PackageReport:
    out: Path
    checkpoint: str
    step: int
    n_experts: int
    files: tuple[str, ...]


# ---- checks --------------------------------------------------------------------------------------
def _check_run(run: str | Path) -> None:
    p = Path(run)
    if p.is_file() and p.suffix == ".pt":
        return
    if not p.exists():
        raise PackageError(f"RUN {str(p)!r} does not exist: give a run folder of memekit train")
    if not p.is_dir() or not list_checkpoints(p):
        raise PackageError(f"{str(p)!r} is not a run folder of memekit train (no checkpoints/step-*.pt): give the "
                           "--out folder of a training run, or one of its checkpoints")


def _check_out(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PackageError(f"OUT {str(out)!r} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PackageError(f"OUT {str(out)!r} exists and is not empty: pass --overwrite to replace it, or choose "
                           "another folder")
    return out


def _require_diffusers() -> None:
    try:
        importlib.import_module("diffusers")
    except ImportError:
        raise PackageError(f"memekit package needs diffusers, which is not installed: {INSTALL_HINT}") from None


def _read_metrics(paths: Sequence[str | Path], step: int) -> list[dict[str, Any]]:
    entries = []
    for path in paths:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise MetricsFileError(f"metrics file {str(p)!r} does not exist: "
                                   "give a file of memekit fid --json") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
            raise MetricsFileError(f"cannot read metrics file {str(p)!r} as JSON ({reason})") from None
        entries += metrics_entries(data, str(p), step)
    return entries


def _training_config(state: dict[str, Any], run: Path) -> dict[str, Any]:
    """The training config the checkpoint was written with (else the run folder's config.json)."""
    text = state.get("config")
    if not text and run.is_dir() and (run / "config.json").is_file():
        text = (run / "config.json").read_text()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {state['path']} holds an unreadable training config") from None


@dataclass
class _Checked:
    out: Path
    state: dict[str, Any]
    spec: MemeSpec
    config: dict[str, Any]
    latent: dict[str, Any] | None
    metadata: dict[str, Any]


def _checked(run: str | Path, out: str | Path, metrics: Sequence[str | Path], steps: int | None,
             overwrite: bool) -> _Checked:
    """Every check of :func:`package_run`, in the order a user fixes them; the card's metadata."""
    _check_run(run)
    out = _check_out(out, overwrite)
    _require_diffusers()
    if steps is not None and steps < 1:
        raise PackageError(f"--steps must be >= 1, got {steps}")
    state = load_checkpoint(run, map_location="cpu")
    spec = checkpoint_spec(state)
    if spec.n_experts > MAX_EXPERTS:
        raise PackageError(f"the run has {spec.n_experts} experts; a MemePipeline holds at most {MAX_EXPERTS}")
    steps = min(DEFAULT_STEPS, spec.diffusion.timesteps) if steps is None else steps
    if steps > spec.diffusion.timesteps:
        raise PackageError(f"--steps {steps} exceeds the model's {spec.diffusion.timesteps} time-steps")
    config, latent = _training_config(state, Path(run)), checkpoint_latent(state)
    entries = _read_metrics(metrics, int(state["step"]))
    metadata = card_metadata(spec, state, config, str(run), entries, steps, latent)
    return _Checked(out, state, spec, config, latent, metadata)


def package_plan(run: str | Path, out: str | Path, metrics: Sequence[str | Path] = (), steps: int | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """What :func:`package_run` would write (checked, nothing written): ``memekit package --dry-run``."""
    c = _checked(run, out, metrics, steps, overwrite)
    names = [f"expert_{n}" for n in range(c.spec.n_experts)]
    return {"run": str(run), "checkpoint": c.state["path"], "step": int(c.state["step"]), "weights": "EMA",
            "out": str(c.out), "replaces": c.out.is_dir() and any(c.out.iterdir()),
            "components": ["scheduler", *names] + (["vae (passed by the user)"] if c.latent else []),
            "files": ["model_index.json", "pipeline.py", "scheduler/scheduler_config.json",
                      *[f"{n}/config.json, {n}/diffusion_pytorch_model.safetensors" for n in names],
                      "README.md", "memekit.json", "spec.json"],
            "metadata": c.metadata["memekit"]}


# ---- writing -------------------------------------------------------------------------------------
def build_pipeline(spec: MemeSpec, weights: dict[str, Any], latent: dict[str, Any] | None = None) -> Any:
    """A :class:`~memekit.search.pipeline.MemePipeline` of ``spec`` holding ``weights`` (a
    :class:`~memekit.space.MultiExpert` state dict, e.g. a checkpoint's ``ema``)."""
    from memekit.space.diffusers_models import MemeExpertModel

    from .pipeline import MemeDDIMScheduler, MemePipeline, scheduler_config

    experts = []
    for n in range(spec.n_experts):
        prefix = f"experts.{n}."
        expert = MemeExpertModel.from_spec(spec, n)
        try:
            expert.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise CheckpointError(f"expert {n}'s weights do not fit the network its spec builds: "
                                  f"{first[:160]}") from None
        experts.append(expert.eval())
    return MemePipeline(MemeDDIMScheduler(**scheduler_config(spec.diffusion)), *experts, latent=latent)


def _same_mode(folder: Path, reference: Path) -> None:
    """Give every file in ``folder`` the permissions of ``reference``, a file memekit wrote (0666 less the
    umask): safetensors writes its files readable by their owner only."""
    mode = reference.stat().st_mode & 0o777
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(mode)


def write_folder(out: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` on a new folder next to ``out``, then rename it to ``out`` (replacing an
    existing ``out`` only once the new one is complete); on any error ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        write(tmp)
        if out.is_dir() and any(out.iterdir()):
            old = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)  # an empty folder is replaced by the rename itself
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


PIPELINE_SHIM = (
    '"""The diffusers entry point of a memekit package: ``DiffusionPipeline.from_pretrained(FOLDER,\n'
    'custom_pipeline=FOLDER, trust_remote_code=True)`` loads :class:`MemePipeline` from the installed memekit\n'
    '(``pip install "memekit[diffusers]"``), which holds the expert networks and the scheduler."""\n\n'
    "from memekit.search.pipeline import MemePipeline\n\n"
    '__all__ = ["MemePipeline"]\n')


def _ship_pipeline_entry(folder: Path) -> None:
    """``pipeline.py`` in the folder, so that plain ``DiffusionPipeline.from_pretrained(folder,
    custom_pipeline=folder, trust_remote_code=True)`` finds :class:`MemePipeline` (diffusers' local
    custom-pipeline convention). ``model_index.json`` keeps the plain class name: naming the file there
    (``["pipeline", "MemePipeline"]``) would make even ``MemePipeline.from_pretrained`` run the folder's code."""
    atomic_write_text(folder / "pipeline.py", PIPELINE_SHIM)


def package_run(run: str | Path, out: str | Path, metrics: Sequence[str | Path] = (), steps: int | None = None,
                overwrite: bool = False) -> PackageReport:
    """Write ``out`` from the run folder (its latest checkpoint) or checkpoint ``run`` (module docstring).
    ``metrics``: ``memekit fid --json`` files of that checkpoint, for the card; ``steps``: the DDIM steps
    its costs and commands use (default 50, or T when smaller). One-line :class:`PackageError` for
    unusable arguments."""
    c = _checked(run, out, metrics, steps, overwrite)
    pipe = build_pipeline(c.spec, c.state["ema"], c.latent)
    card = render_model_card(c.metadata, c.out.name)

    def write(folder: Path) -> None:
        pipe.save_pretrained(folder, safe_serialization=True)
        _ship_pipeline_entry(folder)
        atomic_write_text(folder / "spec.json", c.spec.to_json() + "\n")
        atomic_write_json(folder / "memekit.json", c.metadata)
        atomic_write_text(folder / "README.md", card)
        _same_mode(folder, folder / "spec.json")

    write_folder(c.out, write)
    files = tuple(sorted(str(p.relative_to(c.out)) for p in c.out.rglob("*") if p.is_file()))
    return PackageReport(c.out, c.state["path"], int(c.state["step"]), c.spec.n_experts, files)
