"""The run folder of a training run: what it holds, which checkpoint a run resumes from, its log.

``RUN_DIR/spec.json`` and ``config.json`` (the settings that made the run), ``log.jsonl`` (one
JSON record per event: train, validation, resumed, ...), ``checkpoints/step-NNNNNNNNN.pt``,
``weights/`` (EMA weights as safetensors) and ``samples/``. A run resumes from the folder's newest
readable checkpoint (or one given explicitly), and its log is cut back to that step, so it reads
like one straight run.

What a run may change when it goes on: the budget (``images``; the learning rate is constant
after its warm-up, so a longer budget continues the same run) and the cadences of logs,
validation, samples and checkpoints. What was trained (:data:`TRAINED_KEYS` and the spec) is
refused unless the caller allows it, in a folder with a checkpoint and in one without (a run that
stopped before its first checkpoint starts over, with the same settings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memekit.space import MemeSpec
from memekit.space.files import atomic_write_text

from .checkpoint import (
    UnreadableCheckpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    set_aside,
)
from .train_errors import TrainingError

LOG_FILE = "log.jsonl"
# what a run must share with its checkpoint (or with the folder's config.json when it stopped before its
# first checkpoint) to continue as one run: the data (with the background transparency is composited onto) and
# the optimisation. The budget and the cadences of logs, validation, samples, checkpoints and post-hoc EMA
# snapshots may change freely. A config.json or checkpoint without a key (older memekit) is not compared on it:
# its default reproduces what that run trained on.
TRAINED_KEYS = ("data", "data_limit", "background", "batch", "lr", "warmup_images", "weight_decay", "grad_clip",
                "ema_decay", "seed", "hflip")


def option(key: str, value: Any) -> str:
    """The ``memekit train`` option that sets ``key`` to ``value`` (``--batch 8``, ``--no-hflip``)."""
    if key == "hflip":
        return "no --no-hflip" if value else "--no-hflip"
    if value is None:
        return f"no --{key.replace('_', '-')}"
    if key == "background" and isinstance(value, list | tuple):
        return f"--background {','.join(str(v) for v in value)}"
    return f"--{key.replace('_', '-')} {value}"


def options(settings: dict[str, Any]) -> str:
    """``{key: value}`` as the ``memekit train`` options that give them, in the order given."""
    return " ".join(option(k, v) for k, v in settings.items())


@dataclass
class ResumePoint:
    """Where a run goes on from: the loaded checkpoint ``state`` (None: from step 0), the unreadable
    checkpoints passed over (newest first, with why they cannot be read), and whether the folder held a run without any
    checkpoint (``started_over``) and its ``config.json`` then."""

    state: dict[str, Any] | None = None
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    started_over: bool = False
    stored_config: dict[str, Any] | None = None


class RunFolder:
    """The files of one run in ``path``; only the ``main`` process writes."""

    def __init__(self, path: str | Path, main: bool = True) -> None:
        self.path, self.main = Path(path), main

    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILE

    # ---- reading: where to resume (writes nothing) ---------------------------------------------
    def resume_point(self, spec: MemeSpec, resume: str | Path | None,
                     map_location: str | torch.device = "cpu") -> ResumePoint:
        """The checkpoint to resume from, loaded: ``resume``, else the newest readable one (passing
        over unreadable newer ones); refuses to mix runs (an older checkpoint than the folder's
        latest, or a folder that holds another spec) and a folder whose checkpoints are all unreadable."""
        latest = latest_checkpoint(self.path)
        if resume is not None:
            if latest is not None and Path(resume).resolve() != latest.resolve():
                raise TrainingError(f"{self.path} already holds newer checkpoints (latest {latest.name}); resuming "
                                    f"from {resume} there would mix two runs: use a new --out folder")
            return ResumePoint(load_checkpoint(resume, map_location=map_location))
        point = ResumePoint()
        for path in reversed(list_checkpoints(self.path)):
            try:
                point.state = load_checkpoint(path, map_location=map_location)
                return point
            except UnreadableCheckpoint as err:
                point.unreadable.append((path, err.reason))
        if point.unreadable:
            newest, why = point.unreadable[0]
            raise TrainingError(f"none of the {len(point.unreadable)} checkpoint(s) in {self.path} can be read "
                                f"(newest {newest.name}: {why}): move them away to start over, or use a "
                                "new --out folder")
        self._check_stored_spec(spec)
        point.stored_config = self.stored_config()
        point.started_over = self.holds_files()
        return point

    def _check_stored_spec(self, spec: MemeSpec) -> None:
        spec_file = self.path / "spec.json"
        if spec_file.is_file() and _read_json(spec_file) != spec.to_dict():
            raise TrainingError(f"{self.path} already holds a run of another spec: use a new --out folder")

    def stored_config(self) -> dict[str, Any] | None:
        """The folder's ``config.json`` (None when there is none)."""
        path = self.path / "config.json"
        return _read_json(path) if path.is_file() else None

    def holds_files(self) -> bool:
        """Whether an earlier run left its files here (settings or a log)."""
        return any((self.path / name).is_file() for name in ("spec.json", "config.json", LOG_FILE))

    def config_changes(self, stored: dict[str, Any] | None, config: dict[str, Any], allow: bool,
                       checkpoint: str | None) -> dict[str, tuple[Any, Any]]:
        """The :data:`TRAINED_KEYS` in which ``config`` differs from the ``stored`` config of the run
        (of its ``checkpoint``, or of its ``config.json`` when None), as ``{key: (stored, new)}``; a
        one-line :class:`TrainingError` naming the options unless ``allow``."""
        stored = stored or {}
        changes = {k: (stored[k], config[k]) for k in TRAINED_KEYS if k in stored and stored[k] != config[k]}
        if changes and not allow:
            was = options({k: old for k, (old, _) in changes.items()})
            now = options({k: new for k, (_, new) in changes.items()})
            if checkpoint is not None:
                raise TrainingError(f"{self.path} was trained with {was} (checkpoint {Path(checkpoint).name}), this "
                                    f"command gives {now}: resume with {was}, or pass --allow-config-change to go on "
                                    "with the new settings (logged)")
            raise TrainingError(f"{self.path} holds a run started with {was} that stopped before its first "
                                f"checkpoint, this command gives {now}: rerun with {was}, or pass "
                                "--allow-config-change to start over with the new settings (logged)")
        return changes

    # ---- writing ----------------------------------------------------------------------------------
    def start(self, spec: MemeSpec, config: dict[str, Any], step: int,
              unreadable: list[tuple[Path, str]] = ()) -> list[Path]:
        """Create the folder, write ``spec.json`` and ``config.json``, cut the log back to ``step`` and
        set the ``unreadable`` checkpoints aside (``NAME.unreadable``, out of keep-last-N); returns
        where they went."""
        if not self.main:
            return []
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "spec.json", spec.to_json() + "\n")
        atomic_write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")
        self.truncate_log(step)
        return [set_aside(path) for path, _ in unreadable if path.is_file()]

    def truncate_log(self, step: int) -> None:
        """Drop log lines past ``step`` so the log reads like one straight run."""
        if not self.log_file.is_file():
            return
        kept = [line for line in self.log_file.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_text(self.log_file, "".join(line + "\n" for line in kept))

    def append_log(self, record: dict[str, Any]) -> None:
        """One JSON line in ``log.jsonl`` (once the folder exists)."""
        if self.main and self.path.is_dir():
            with open(self.log_file, "a") as f:
                f.write(json.dumps(record) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log_file.is_file():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line.strip()]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise TrainingError(f"{path} cannot be read as JSON: delete it (memekit writes it again) or use a new "
                            "--out folder") from None

