"""What a finished trial shows in optuna-dashboard: its proxy run's sample grid and per-t validation loss.

Each trial that trained uploads to the study's artifact store (Optuna's ``FileSystemArtifactStore``,
``STUDY_DIR/artifacts``)

- ``samples-*.png``, the proxy run's last fixed-seed sample grid (``sample_grid_artifact``);
- ``val_loss_per_t.json``, the validation loss at every time-step of the fixed grid, with ``val_rel``
  per t and the linear (Wiener) reference when the run measured them, the experts' intervals and the
  means the trial records as user attributes (``val_loss_per_t_artifact``);
- ``val_loss_per_t.png``, that loss against t with the experts' intervals shaded
  (``val_loss_plot_artifact``).

The artifact ids are user attributes of the trial (names in brackets), so a notebook finds them too
(``optuna.artifacts.download_artifact``). The files are also kept in the trial's folder. The numbers
are computed first (:func:`validation_curve`), then drawn (:func:`plot_validation_curve`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure

from memekit.space import MemeSpec

CURVE_FILE = "val_loss_per_t.json"
PLOT_FILE = "val_loss_per_t.png"
# user attributes that hold the artifact ids
GRID_ATTR, CURVE_ATTR, PLOT_ATTR = "sample_grid_artifact", "val_loss_per_t_artifact", "val_loss_plot_artifact"


@dataclass(frozen=True)
class ValidationCurve:
    """A run's validation loss on the fixed grid of time-steps (:func:`~memekit.search.validation.validation_loss`).

    ``val_rel_per_t`` is ``log(loss_t / reference_t)`` against the best linear denoiser's loss
    ``val_reference_per_t``; both are None when the run did not measure the reference.
    ``intervals`` are the experts' ``[start, end)`` time-steps, lowest noise first.
    """

    timesteps: int
    val_timesteps: list[int]
    val_loss_per_t: list[float]
    intervals: list[tuple[int, int]]
    val_rel_per_t: list[float] | None = None
    val_reference_per_t: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "intervals": [list(i) for i in self.intervals]}


def validation_curve(val: Mapping[str, Any], spec: MemeSpec) -> ValidationCurve | None:
    """The per-t validation numbers of ``val`` (a run's validation result) with ``spec``'s intervals;
    None when ``val`` holds no per-t loss."""
    if "val_loss_per_t" not in val or "val_timesteps" not in val:
        return None
    ts, loss = [int(t) for t in val["val_timesteps"]], [float(v) for v in val["val_loss_per_t"]]
    if len(ts) != len(loss):
        raise ValueError(f"{len(ts)} validation time-steps but {len(loss)} losses")
    rel, ref = val.get("val_rel_per_t"), val.get("val_reference_per_t")
    return ValidationCurve(timesteps=spec.diffusion.timesteps, val_timesteps=ts, val_loss_per_t=loss,
                           intervals=[(int(lo), int(hi)) for lo, hi in spec.intervals],
                           val_rel_per_t=None if rel is None else [float(v) for v in rel],
                           val_reference_per_t=None if ref is None else [float(v) for v in ref])


def plot_validation_curve(curve: ValidationCurve, title: str = "") -> Figure:
    """Validation loss against t (log scale) with the experts' intervals shaded and, when measured, the
    linear reference's loss (dashed) and ``val_rel`` per t in a second panel. Never shows or saves."""
    fig = Figure(figsize=(6.4, 4.8 if curve.val_rel_per_t is not None else 3.6), layout="constrained")
    panels = 2 if curve.val_rel_per_t is not None else 1
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    top = axes[0]
    top.plot(curve.val_timesteps, curve.val_loss_per_t, "o-", color="tab:blue", ms=3, label="validation loss")
    if curve.val_reference_per_t is not None:
        top.plot(curve.val_timesteps, curve.val_reference_per_t, "--", color="tab:gray",
                 label="linear (Wiener) reference")
    top.set_yscale("log")
    top.set_ylabel("loss at t")
    top.legend(loc="lower left", fontsize=8)  # the loss falls from the top left: the expert labels keep the top right
    if panels == 2:
        axes[1].plot(curve.val_timesteps, curve.val_rel_per_t, "o-", color="tab:purple", ms=3)
        axes[1].axhline(0.0, color="tab:gray", lw=0.8)
        axes[1].set_ylabel("val_rel at t\nlog(loss / reference)")
    for ax in axes:
        _shade_intervals(ax, curve.intervals, label=ax is top)
        ax.set_xlim(0, curve.timesteps)
    axes[-1].set_xlabel("time-step t (0 = clean)")
    top.set_title(title or "validation loss per time-step", fontsize=10)
    return fig


def _shade_intervals(ax, intervals: Sequence[tuple[int, int]], label: bool) -> None:
    for k, (lo, hi) in enumerate(intervals):
        if k % 2:
            ax.axvspan(lo, hi, color="tab:orange", alpha=0.12, lw=0)
        if k:
            ax.axvline(lo, color="tab:orange", lw=1.0)
        if label:  # expert k's name at the top of its interval
            ax.text((lo + hi) / 2, 0.97, f"expert {k}", transform=ax.get_xaxis_transform(), ha="center",
                    va="top", fontsize=8, color="tab:orange")


def upload_trial_artifacts(trial: optuna.Trial, store: optuna.artifacts.FileSystemArtifactStore | None,
                           run_dir: Path, val: Mapping[str, Any], spec: MemeSpec) -> dict[str, str]:
    """Upload the proxy run's sample grid and its per-t validation curve (JSON and PNG, also written
    to ``run_dir``) to ``store`` for ``trial``; record each artifact id as a user attribute (module
    docstring). Returns ``{user attribute: artifact id}``; nothing without a store."""
    if store is None:
        return {}
    uploads: list[tuple[str, Path, str]] = []
    grids = sorted((run_dir / "samples").glob("*.png"))
    if grids:
        uploads.append((GRID_ATTR, grids[-1], "image/png"))
    curve = validation_curve(val, spec)
    if curve is not None:
        record = {"trial": trial.number, **curve.to_dict(),
                  **{key: val[key] for key in ("val_loss", "val_loss_quarters", "val_rel", "val_rel_quarters",
                                               "val_rel_per_expert") if key in val}}
        (run_dir / CURVE_FILE).write_text(json.dumps(record, indent=1) + "\n")
        fig = plot_validation_curve(curve, f"trial {trial.number}: validation loss per time-step")
        fig.savefig(run_dir / PLOT_FILE, dpi=100)
        uploads += [(CURVE_ATTR, run_dir / CURVE_FILE, "application/json"),
                    (PLOT_ATTR, run_dir / PLOT_FILE, "image/png")]
    ids = {}
    with tempfile.TemporaryDirectory() as staging:
        for attr, path, mimetype in uploads:
            if attr == GRID_ATTR:  # the dashboard names an artifact by its file: samples-step-NNNNNNNNN.png
                path = Path(shutil.copyfile(path, Path(staging) / f"samples-{path.name}"))
            ids[attr] = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path),
                                                         study_or_trial=trial, mimetype=mimetype)
            trial.set_user_attr(attr, ids[attr])
    return ids
