"""The run folder of a training run: what it holds, which checkpoint a run resumes from, its log.

``RUN_DIR/spec.json`` and ``config.json`` (the settings that made the run), ``log.jsonl`` (one
JSON record per event: train, validation, resumed, ...), ``checkpoints/step-NNNNNNNNN.pt`` and
``samples/``. A run resumes from the folder's latest checkpoint (or one given explicitly), and its
log is cut back to that step, so it reads like one straight run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memekit.space import MemeSpec
from memekit.space.files import atomic_write_text

from .checkpoint import latest_checkpoint
from .train_errors import TrainingError

LOG_FILE = "log.jsonl"
# what a resumed run must share with its checkpoint to continue one run: the data, the budget and
# the optimisation (cadences of logs, validation, samples and checkpoints may change freely)
RESUME_KEYS = ("data", "data_limit", "images", "batch", "lr", "warmup_images", "weight_decay", "grad_clip",
               "ema_decay", "seed", "hflip")


def _option(key: str, value: Any) -> str:
    """The ``memekit train`` option that sets ``key`` to ``value``."""
    if key == "hflip":
        return "no --no-hflip" if value else "--no-hflip"
    return f"--{key.replace('_', '-')} {value}"


class RunFolder:
    """The files of one run in ``path``; only the ``main`` process writes."""

    def __init__(self, path: str | Path, main: bool = True) -> None:
        self.path, self.main = Path(path), main

    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILE

    def resume_source(self, spec: MemeSpec, resume: str | Path | None) -> Path | None:
        """The checkpoint to resume from: ``resume``, else the latest one; refuses to mix runs (an
        older checkpoint than the folder's latest, or a folder that holds another spec)."""
        latest = latest_checkpoint(self.path)
        if resume is not None and latest is not None and Path(resume).resolve() != latest.resolve():
            raise TrainingError(f"{self.path} already holds newer checkpoints (latest {latest.name}); resuming "
                                f"from {resume} there would mix two runs: use a new --out folder")
        source = Path(resume) if resume is not None else latest
        spec_file = self.path / "spec.json"
        if source is None and spec_file.is_file() and json.loads(spec_file.read_text()) != spec.to_dict():
            raise TrainingError(f"{self.path} already holds a run of another spec: use a new --out folder")
        return source

    def config_changes(self, state: dict[str, Any], config: dict[str, Any],
                       allow: bool) -> dict[str, tuple[Any, Any]]:
        """The :data:`RESUME_KEYS` in which ``config`` differs from the checkpoint ``state``'s
        config, as ``{key: (checkpoint's, new)}``; a one-line :class:`TrainingError` unless ``allow``."""
        stored = json.loads(state.get("config") or "{}")
        changes = {k: (stored[k], config[k]) for k in RESUME_KEYS if k in stored and stored[k] != config[k]}
        if changes and not allow:
            key, (old, new) = next(iter(changes.items()))
            raise TrainingError(f"{self.path} was trained with {key} {old!r}, this command gives {new!r} "
                                f"(checkpoint {Path(state['path']).name}): resume with {_option(key, old)}, or "
                                "pass --allow-config-change to go on with the new settings (logged)")
        return changes

    def start(self, spec: MemeSpec, config: dict[str, Any], step: int) -> None:
        """Create the folder, write ``spec.json`` and ``config.json``, cut the log back to ``step``."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "spec.json", spec.to_json() + "\n")
        atomic_write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")
        self.truncate_log(step)

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
