"""Feature spectra of one expert of a preset, a spec JSON or a trained run (``memekit features``).

:class:`FeatureJob` names the model (a preset or spec JSON: random weights from ``seed``; a run
folder or checkpoint: its EMA weights), the expert, the data and the time-steps;
:meth:`FeatureJob.plan` resolves and checks them without loading anything heavy, and
:func:`run_feature_analysis` measures :func:`memekit.analysis.features.feature_spectra` and writes
the report (:func:`memekit.analysis.reports.write_feature_report`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from memekit.analysis.data import check_data_for_spec, load_data, spec_for_data, to_model_input
from memekit.analysis.device import resolve_device
from memekit.analysis.features import default_layers, feature_spectra
from memekit.analysis.reports import write_feature_report
from memekit.space import Diffusion, MemeSpec, build_expert
from memekit.space.errors import SpecError
from memekit.space.files import prepare_output_dir

from .checkpoint import checkpoint_spec, load_checkpoint


def is_checkpoint(name: str | Path) -> bool:
    """A run folder or a ``.pt`` file (rather than a preset name or a spec JSON)."""
    return Path(name).is_dir() or str(name).endswith(".pt")


@dataclass(frozen=True)
class FeatureJob:
    """What ``memekit features`` measures (``t``: default 0, T/4, T/2, 3T/4, T-1; ``layers``:
    default every U-Net block)."""

    model: str
    data: str
    out: str
    expert: int = 0
    t: tuple[int, ...] | None = None
    layers: tuple[str, ...] | None = None
    resolution: int | None = None
    limit: int | None = 16
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False

    def spec(self) -> MemeSpec:
        if is_checkpoint(self.model):
            return checkpoint_spec(load_checkpoint(self.model))
        return spec_for_data(self.model, self.data, self.resolution)

    def plan(self) -> tuple[MemeSpec, dict[str, Any]]:
        """The model's spec and the resolved settings (``config.json``, ``--dry-run``); one-line
        errors for an expert or a time-step out of range."""
        spec = self.spec()
        if not 0 <= self.expert < spec.n_experts:
            raise SpecError(f"--expert {self.expert} is out of range: {self.model} has {spec.n_experts} expert(s)")
        T = spec.diffusion.timesteps
        ts = list(self.t) if self.t is not None else sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})
        bad = [t for t in ts if not 0 <= t < T]
        if bad:
            raise SpecError(f"--t {bad[0]} is outside [0, {T})")
        config = {"command": "features", "model": self.model, "expert": self.expert, "data": self.data,
                  "resolution": spec.experts[self.expert].resolution, "limit": self.limit, "t": ts,
                  "layers": list(self.layers) if self.layers else None, "seed": self.seed, "device": self.device,
                  "out": str(self.out),
                  "weights": ("EMA weights of the checkpoint" if is_checkpoint(self.model)
                              else "random init (torch.manual_seed(seed))")}
        return spec, config


@dataclass(frozen=True)
class FeatureReport:
    frame: pd.DataFrame
    layers: list[str]  # the analysed module names, in network order
    out: Path
    files: list[str]


def run_feature_analysis(job: FeatureJob, progress: bool = True) -> FeatureReport:
    """Feature spectra of ``job``'s expert on its data, written into ``job.out``."""
    spec, config = job.plan()
    out = prepare_output_dir(job.out, job.overwrite)
    device = resolve_device(job.device)
    torch.manual_seed(job.seed)
    if is_checkpoint(job.model):
        from .sampling import load_model

        model = load_model(job.model, device=device)[0].experts[job.expert].eval()
    else:
        model = build_expert(spec.experts[job.expert]).to(device).eval()
    expert = spec.experts[job.expert]
    check_data_for_spec(job.data, expert.image_channels, expert.resolution)
    x0 = to_model_input(load_data(job.data, config["resolution"], limit=job.limit, progress=progress)).to(device)
    layers = list(job.layers) if job.layers else None
    frame = feature_spectra(model, x0, Diffusion(spec.diffusion), config["t"], layers=layers, seed=job.seed,
                            progress=progress)
    files = write_feature_report(frame, spec, config, out)
    return FeatureReport(frame, layers or default_layers(model), out, files)
