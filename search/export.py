"""Export a finished (or running) study: chosen specs as JSON, a trials table, plots and a report.

Data first, then drawing: :func:`load_study` opens a study made by ``memekit search``,
:func:`select_trials` picks trials (the feasible Pareto front, or the top K by quality),
:func:`trial_spec` rebuilds a trial's MemeSpec with ``sample(FixedTrial(params), space, prior)``
and compares it with the spec recorded on the trial, :func:`trials_frame` returns one row per
trial; the renderers (:func:`plot_pareto`, :func:`plot_history`, :func:`plot_importances`)
return Figures and never show or save; :func:`export_study` writes everything.

The speed-up column is the trajectory MACs of ``single-large`` at the study's resolution (same
number of DDIM steps, :func:`memekit.space.spec_cost`) divided by the trial's trajectory MACs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from memekit.space import MemeSpec, SpecCost, get_preset, load_spec, save_spec, spec_cost
from memekit.space.errors import MemekitError, SpecError

from .searchspace import SearchSpace, sample
from .storage import journal_path, open_storage, redact_url, storage_kind
from .study import SearchConfig, study_space

SPEED_UP_BASELINE = "single-large"
PLOT_FILES = {"pareto": "pareto_front.png", "history": "optimization_history.png",
              "importances": "param_importances.png"}
REPORT_FILE, TRIALS_CSV, MANIFEST = "report.md", "trials.csv", "export.json"
FRAME_COLUMNS = ("trial", "state", "warm_start", "n_experts", "intervals", "attention_shares", "soft_assignment",
                 "quality", "cost", "trajectory_gmacs", "params", "speed_up", "failure_reason")


class ExportError(MemekitError, ValueError):
    """A study cannot be found, read or exported."""


@dataclass(frozen=True)
class LoadedStudy:
    """A study made by ``memekit search``, with what is needed to rebuild its specs."""

    study: optuna.Study
    config: SearchConfig
    space: SearchSpace
    prior: MemeSpec | None
    study_dir: Path | None
    where: str  # storage, passwords redacted

    @property
    def multi_objective(self) -> bool:
        return len(self.study.directions) > 1

    @property
    def quality_name(self) -> str:
        return (self.study.metric_names or self.config.metric_names())[0]

    @property
    def cost_name(self) -> str:
        """The second objective, or ``trajectory_gmacs`` (a user attr) in single-objective studies."""
        names = self.study.metric_names or self.config.metric_names()
        return names[1] if self.multi_objective and len(names) > 1 else "trajectory_gmacs"


# ---- opening a study ------------------------------------------------------------------------------
def _config_file(study_dir: Path) -> SearchConfig:
    if not study_dir.is_dir():
        raise ExportError(f"study folder {str(study_dir)!r} does not exist: give the STUDY_DIR of "
                          "'memekit search', or --storage URL --study NAME")
    path = study_dir / "search_config.json"
    if not path.is_file():
        raise ExportError(f"{str(study_dir)!r} holds no study (no search_config.json): give the STUDY_DIR of "
                          "'memekit search', or --storage URL --study NAME")
    try:
        return SearchConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise ExportError(f"{path} is not a memekit search config ({err})") from None


def _open_storage(storage: str | None, study_dir: Path | None) -> optuna.storages.BaseStorage:
    if storage_kind(storage) == "journal":
        path = journal_path(storage, study_dir or Path.cwd())
        if not path.is_file():  # opening a journal creates it: check first
            raise ExportError(f"no study journal at {str(path)!r}")
    return open_storage(storage, study_dir or Path.cwd())


def load_study(study_dir: str | Path | None = None, storage: str | None = None,
               study_name: str | None = None) -> LoadedStudy:
    """Open a memekit study from ``STUDY_DIR`` (its search_config.json names storage and study) or
    from ``storage`` + ``study_name``; one-line :class:`ExportError` when there is none."""
    folder = Path(study_dir) if study_dir is not None else None
    file_config = _config_file(folder) if folder is not None else None
    storage = storage or os.environ.get("MEMEKIT_STORAGE") or (file_config.storage if file_config else None)
    if storage is not None and ":***@" in storage:
        raise ExportError("the study's storage URL is stored without its password: pass --storage URL "
                          "(or set MEMEKIT_STORAGE)")
    name = study_name or (file_config.study_name if file_config else None)
    if folder is None and (storage is None or name is None):
        raise ExportError("give STUDY_DIR, or both --storage URL and --study NAME")
    backend = _open_storage(storage, folder)
    where = redact_url(storage) if storage else str(journal_path(None, folder or Path.cwd()))
    try:
        study = optuna.load_study(study_name=name, storage=backend, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        names = optuna.get_all_study_names(backend)
        raise ExportError(f"no study named {name!r} in {where} (studies there: "
                          f"{', '.join(names) or 'none'})") from None
    stored = study.user_attrs.get("memekit_config")
    if stored is None and file_config is None:
        raise ExportError(f"study {name!r} has no memekit_config: it was not made by 'memekit search'")
    config = SearchConfig.from_dict(stored) if stored is not None else file_config
    folder = folder or (Path(config.study_dir) if config.study_dir else None)
    config = dataclasses.replace(config, study_dir=str(folder or ""))
    space = study_space(config, folder)
    prior_file = folder / "prior_spec.json" if folder is not None else None
    prior = load_spec(prior_file) if prior_file is not None and prior_file.is_file() else None
    return LoadedStudy(study, config, space, prior, folder, where)


# ---- choosing trials ------------------------------------------------------------------------------
def is_feasible(trial: FrozenTrial) -> bool:
    """COMPLETE, every constraint <= 0 (Optuna's convention) and finite objective values."""
    return (trial.state == TrialState.COMPLETE and all(c <= 0 for c in trial.constraints.values())
            and all(math.isfinite(v) for v in trial.values or [math.nan]))


def trial_state(trial: FrozenTrial) -> str:
    """``COMPLETE``, ``infeasible`` (complete but a constraint > 0), ``PRUNED``, ``FAIL``, ..."""
    if trial.state == TrialState.COMPLETE and not is_feasible(trial):
        return "infeasible"
    return trial.state.name


def select_trials(study: optuna.Study, top: int | None = None) -> list[FrozenTrial]:
    """``top=None``: the feasible Pareto front (``study.best_trials``; the best trial(s) of a
    single-objective study); else the ``top`` feasible complete trials by the first objective.
    Ordered by the first objective, then trial number."""
    if top is not None and top < 1:
        raise ExportError(f"--top must be a positive integer, got {top}")
    if top is None:
        chosen = [t for t in study.best_trials if is_feasible(t)]
    else:
        chosen = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_feasible(t)]
    chosen.sort(key=lambda t: (t.values[0], t.number))
    return chosen if top is None else chosen[:top]


# ---- specs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialSpec:
    """A trial's spec rebuilt from its params, and how it compares with what the trial recorded."""

    number: int
    rebuilt: MemeSpec
    recorded: MemeSpec | None
    differences: tuple[str, ...]  # empty: rebuilt spec, params and MACs equal the recorded ones

    @property
    def rebuilt_differs(self) -> bool:
        """The rebuilt spec is not the one the trial trained (e.g. the search space changed since)."""
        return self.recorded is not None and self.recorded.to_dict() != self.rebuilt.to_dict()

    @property
    def spec(self) -> MemeSpec:
        """The spec to export: the rebuilt one, unless it differs from the trained (recorded) one."""
        return self.recorded if self.rebuilt_differs else self.rebuilt


@functools.lru_cache(maxsize=512)
def _cost(spec: MemeSpec, sampling_steps: int) -> SpecCost:
    """:func:`spec_cost`, memoised (specs are frozen; exports of one study repeat them)."""
    return spec_cost(spec, sampling_steps)


def trial_spec(trial: FrozenTrial, space: SearchSpace, prior: MemeSpec | None, sampling_steps: int,
               check_cost: bool = True) -> TrialSpec:
    """Rebuild ``trial``'s spec with ``sample(FixedTrial(params), space, prior)`` and compare it with
    the user attr ``spec``, and (``check_cost``, :func:`spec_cost`) its parameter count and
    trajectory MACs with the user attrs ``params_total`` and ``trajectory_gmacs``."""
    try:
        rebuilt = sample(optuna.trial.FixedTrial(trial.params), space, prior)
    except (ValueError, SpecError) as err:
        raise ExportError(f"trial {trial.number}: cannot rebuild its spec from params ({err})") from None
    recorded = MemeSpec.from_json(trial.user_attrs["spec"]) if "spec" in trial.user_attrs else None
    differences = []
    if recorded is None:
        differences.append("no recorded spec")
    elif recorded.to_dict() != rebuilt.to_dict():
        keys = [k for k, v in rebuilt.to_dict().items() if recorded.to_dict().get(k) != v]
        differences.append(f"spec differs in {', '.join(keys)}")
    if not check_cost:
        return TrialSpec(trial.number, rebuilt, recorded, tuple(differences))
    cost = _cost(rebuilt, sampling_steps)
    if "params_total" in trial.user_attrs and trial.user_attrs["params_total"] != cost.params:
        differences.append(f"params {cost.params} != recorded {trial.user_attrs['params_total']}")
    gmacs = trial.user_attrs.get("trajectory_gmacs")
    if gmacs is not None and not math.isclose(gmacs, cost.trajectory_macs / 1e9, rel_tol=1e-9):
        differences.append(f"trajectory GMACs {cost.trajectory_macs / 1e9:.6g} != recorded {gmacs:.6g}")
    return TrialSpec(trial.number, rebuilt, recorded, tuple(differences))


def _spec_of(trial: FrozenTrial, space: SearchSpace, prior: MemeSpec | None) -> MemeSpec | None:
    """The spec a trial trained (recorded), else rebuilt from its params, else None."""
    if "spec" in trial.user_attrs:
        return MemeSpec.from_json(trial.user_attrs["spec"])
    try:
        return sample(optuna.trial.FixedTrial(trial.params), space, prior)
    except (ValueError, SpecError, MemekitError):
        return None


def baseline_trajectory_macs(space: SearchSpace, sampling_steps: int) -> int:
    """Trajectory MACs of ``single-large`` at the space's resolution (batch 1)."""
    return _cost(get_preset(SPEED_UP_BASELINE, space.base_expert.resolution), sampling_steps).trajectory_macs


# ---- the table ----------------------------------------------------------------------------------------
def _trajectory_gmacs(trial: FrozenTrial, spec: MemeSpec | None, sampling_steps: int) -> float:
    if "trajectory_gmacs" in trial.user_attrs:
        return float(trial.user_attrs["trajectory_gmacs"])
    return _cost(spec, sampling_steps).trajectory_macs / 1e9 if spec is not None else math.nan


def _row(loaded: LoadedStudy, trial: FrozenTrial, baseline_gmacs: float) -> dict[str, Any]:
    spec = _spec_of(trial, loaded.space, loaded.prior)
    gmacs = _trajectory_gmacs(trial, spec, loaded.config.sampling_steps)
    values = trial.values or []
    quality = values[0] if values else math.nan
    cost = values[1] if loaded.multi_objective and len(values) > 1 else gmacs
    params = trial.user_attrs.get("params_total")
    return {
        "trial": trial.number, "state": trial_state(trial), "warm_start": trial.user_attrs.get("warm_start", ""),
        "n_experts": spec.n_experts if spec else None,
        "intervals": spec.intervals if spec else None,
        "attention_shares": tuple(e.attention_share for e in spec.experts) if spec else None,
        "soft_assignment": spec.soft_assignment if spec else None,
        "quality": quality, "cost": cost, "trajectory_gmacs": gmacs,
        "params": params if params is not None else (_cost(spec, 1).params if spec else None),
        "speed_up": baseline_gmacs / gmacs if gmacs and math.isfinite(gmacs) else math.nan,
        "failure_reason": trial.user_attrs.get("failure_reason", trial.user_attrs.get("skipped", "")),
    }


def trials_frame(loaded: LoadedStudy, chosen: Sequence[int] = ()) -> pd.DataFrame:
    """One row per finished trial (surplus and unfinished trials left out): state, warm-start
    label, spec summary (N, intervals, attention shares per expert, p_n), quality, cost,
    trajectory GMACs, parameters, speed-up against single-large, and ``exported`` for ``chosen``.

    ``frame.attrs`` holds ``quality`` and ``cost`` (the metric names), the baseline and steps."""
    baseline = baseline_trajectory_macs(loaded.space, loaded.config.sampling_steps) / 1e9
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    trials = [t for t in loaded.study.get_trials(deepcopy=False, states=states) if not t.user_attrs.get("surplus")]
    frame = pd.DataFrame([_row(loaded, t, baseline) for t in trials], columns=list(FRAME_COLUMNS))
    frame["n_experts"] = frame["n_experts"].astype("Int64")
    frame["params"] = frame["params"].astype("Int64")
    frame["exported"] = frame["trial"].isin(list(chosen))
    frame.attrs.update(quality=loaded.quality_name, cost=loaded.cost_name, baseline=SPEED_UP_BASELINE,
                       baseline_gmacs=baseline, sampling_steps=loaded.config.sampling_steps,
                       resolution=loaded.space.base_expert.resolution)
    return frame


# ---- renderers ------------------------------------------------------------------------------------------
def _optuna_axes(plot, *args, **kwargs):
    """Call an ``optuna.visualization.matplotlib`` function without leaking its pyplot figure or
    its global ``ggplot`` style; returns its Axes (whose figure is detached from pyplot)."""
    import matplotlib.pyplot as plt

    with plt.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # we minimise
        ax = plot(*args, **kwargs)
    plt.close(ax.figure)
    return ax


def plot_pareto(loaded: LoadedStudy, frame: pd.DataFrame) -> Figure:
    """Optuna's Pareto-front plot (quality vs cost; single-objective studies: value vs trajectory
    GMACs) with the warm-start baselines marked by stars and labelled, exported trials numbered."""
    from optuna.visualization import matplotlib as ovm

    names = [frame.attrs["quality"], frame.attrs["cost"]]
    targets = None
    if not loaded.multi_objective:
        def targets(t: FrozenTrial) -> tuple[float, float]:
            return t.values[0], float(t.user_attrs.get("trajectory_gmacs", math.nan))
    ax = _optuna_axes(ovm.plot_pareto_front, loaded.study, target_names=names, targets=targets)
    drawn = frame[frame["state"].eq("COMPLETE")]
    drawn = drawn[drawn["quality"].map(math.isfinite) & drawn["cost"].map(math.isfinite)]
    for row in drawn[drawn["exported"]].itertuples():
        ax.annotate(f"#{row.trial}", (row.quality, row.cost), xytext=(4, -10), textcoords="offset points",
                    fontsize=7, color="dimgray")
    warm = drawn[drawn["warm_start"] != ""]
    if len(warm):
        ax.scatter(warm["quality"], warm["cost"], marker="*", s=220, facecolors="none", edgecolors="black",
                   linewidths=1.2, label="warm start", zorder=3)
        for row in warm.itertuples():
            ax.annotate(row.warm_start, (row.quality, row.cost), xytext=(6, 6), textcoords="offset points",
                        fontsize=8)
        ax.legend()
    return ax.figure


def plot_history(loaded: LoadedStudy) -> Figure:
    """Optuna's optimisation history of the quality objective."""
    from optuna.visualization import matplotlib as ovm

    target = (lambda t: t.values[0]) if loaded.multi_objective else None
    name = loaded.quality_name
    return _optuna_axes(ovm.plot_optimization_history, loaded.study, target=target, target_name=name).figure


def plot_importances(loaded: LoadedStudy) -> Figure:
    """Optuna's parameter importances for the quality objective, over feasible complete trials
    (Optuna's default evaluator); needs >= 2 of them."""
    from optuna.visualization import matplotlib as ovm

    feasible = [t for t in loaded.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_feasible(t)]
    if len(feasible) < 2:
        raise ExportError(f"parameter importances need >= 2 feasible complete trials, the study has {len(feasible)}")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        copy = optuna.create_study(directions=loaded.study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(feasible)
    target = (lambda t: t.values[0]) if loaded.multi_objective else None
    return _optuna_axes(ovm.plot_param_importances, copy, target=target, target_name=loaded.quality_name).figure


# ---- the report --------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return f"{value:,}" if isinstance(value, numbers.Integral) else str(value)


def _shares(shares: Sequence[Sequence[float]] | None) -> str:
    if shares is None:
        return "–"
    return " · ".join("/".join(f"{s:g}" for s in expert) for expert in shares)


def _intervals(intervals: Sequence[Sequence[int]] | None) -> str:
    return "–" if intervals is None else " ".join(f"[{lo},{hi})" for lo, hi in intervals)


def markdown_table(frame: pd.DataFrame, spec_files: dict[int, str] | None = None) -> str:
    """The trials of ``frame`` as a Markdown table (spec summary, quality, cost, speed-up, state)."""
    q, c = frame.attrs["quality"], frame.attrs["cost"]
    head = ["trial", "warm start", "N", "intervals", "attention shares (per expert, per stage)", "p_n", q]
    head += [c] if c != "trajectory_gmacs" else []
    head += ["trajectory GMACs", "params", f"speed-up vs {frame.attrs['baseline']}", "state"]
    head += ["spec"] if spec_files else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in frame.itertuples(index=False):
        cells = [str(row.trial), row.warm_start or "", _fmt(row.n_experts), _intervals(row.intervals),
                 _shares(row.attention_shares),
                 "–" if row.soft_assignment is None else "/".join(f"{p:.2f}" for p in row.soft_assignment),
                 _fmt(row.quality)]
        cells += [_fmt(row.cost)] if c != "trajectory_gmacs" else []
        cells += [_fmt(row.trajectory_gmacs), _fmt(row.params),
                  "–" if math.isnan(row.speed_up) else f"{row.speed_up:.2f}x", row.state]
        cells += [f"[{spec_files[row.trial]}]({spec_files[row.trial]})"] if spec_files else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(loaded: LoadedStudy, frame: pd.DataFrame, selection: str, specs: Sequence[TrialSpec],
                    spec_files: dict[int, str], plots: dict[str, str | None], notes: Sequence[str] = ()) -> str:
    """``report.md``: the study, the exported trials, the spec check, the plots, all trials."""
    cfg, counts = loaded.config, frame["state"].value_counts().to_dict()
    lines = [f"# Study `{loaded.study.study_name}`", "",
             f"- storage: `{loaded.where}`",
             f"- objective: {cfg.objective} ({', '.join(loaded.study.metric_names or cfg.metric_names())}, minimised); "
             f"space `{cfg.space}` at {frame.attrs['resolution']} px; data `{cfg.data}`; proxy "
             f"{cfg.proxy_images:,} images; sampler {cfg.sampler}",
             "- trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
             f"- exported: {selection}",
             f"- speed-up: trajectory MACs of `{frame.attrs['baseline']}` at {frame.attrs['resolution']} px "
             f"({frame.attrs['baseline_gmacs']:.4g} GMACs over {frame.attrs['sampling_steps']} DDIM steps, "
             "memekit.space.spec_cost) / the trial's trajectory MACs", "",
             "## Exported trials", "",
             markdown_table(frame[frame["exported"]].sort_values(["quality", "trial"]), spec_files), ""]
    mismatched = [s for s in specs if s.differences]
    if not mismatched:
        lines.append(f"Spec check: every exported spec rebuilt from `trial.params` with "
                     f"`sample(FixedTrial(params), space, prior)` equals the recorded spec, parameter count "
                     f"and trajectory MACs ({len(specs)} trials).")
    for s in mismatched:
        written = ("the recorded (trained) spec; the rebuilt one is in the .rebuilt.json file next to it"
                   if s.rebuilt_differs else "the rebuilt spec")
        lines.append(f"- **spec check, trial {s.number}:** {'; '.join(s.differences)}; {spec_files[s.number]} "
                     f"holds {written}.")
    lines += ["", "## Plots", ""]
    for title, name in plots.items():
        lines.append(f"![{title}]({name})" if name else f"- {title}: not drawn")
    lines += [f"- {note}" for note in notes]
    lines += ["", "## All trials", "", markdown_table(frame), ""]
    return "\n".join(lines)


# ---- writing an export ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    out: Path
    frame: pd.DataFrame
    specs: tuple[TrialSpec, ...]
    files: tuple[Path, ...]
    notes: tuple[str, ...]


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"--out {str(out)!r} is not empty: choose another folder or pass --overwrite")
        for pattern in ("trial-*.json", "*.png", REPORT_FILE, TRIALS_CSV, MANIFEST):
            for path in out.glob(pattern):
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _draw_plots(loaded: LoadedStudy, frame: pd.DataFrame, out: Path) -> tuple[dict[str, str | None], list[str]]:
    drawers = {"Pareto front": ("pareto", lambda: plot_pareto(loaded, frame)),
               "optimisation history": ("history", lambda: plot_history(loaded)),
               "parameter importances": ("importances", lambda: plot_importances(loaded))}
    plots: dict[str, str | None] = {}
    notes = []
    for title, (key, draw) in drawers.items():
        try:
            draw().savefig(out / PLOT_FILES[key], dpi=120, bbox_inches="tight")
            plots[title] = PLOT_FILES[key]
        except Exception as err:  # noqa: BLE001 - optuna's plots raise many types; note and go on
            plots[title] = None
            notes.append(f"{title} not drawn: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    return plots, notes


def export_study(loaded: LoadedStudy, out: str | Path, top: int | None = None,
                 overwrite: bool = False) -> ExportResult:
    """Write ``trial-NNNNN.json`` per chosen trial (``top=None``: the feasible Pareto front),
    ``trials.csv``, the plots, ``report.md`` and ``export.json`` into ``out``."""
    out = Path(out)
    chosen = select_trials(loaded.study, top)
    if not chosen:
        raise ExportError(f"study {loaded.study.study_name!r} has no feasible complete trial to export yet")
    _prepare_out(out, overwrite)
    steps = loaded.config.sampling_steps
    specs = tuple(trial_spec(t, loaded.space, loaded.prior, steps) for t in chosen)
    files, spec_files = [], {}
    for s in specs:
        spec = dataclasses.replace(s.spec, name=f"{loaded.study.study_name}-trial-{s.number:05d}")
        spec_files[s.number] = f"trial-{s.number:05d}.json"
        files.append(save_spec(spec, out / spec_files[s.number]))
        if s.rebuilt_differs:
            files.append(save_spec(s.rebuilt, out / f"trial-{s.number:05d}.rebuilt.json"))
    loaded.study.trials_dataframe().to_csv(out / TRIALS_CSV, index=False)
    frame = trials_frame(loaded, [t.number for t in chosen])
    plots, notes = _draw_plots(loaded, frame, out)
    selection = (f"top {top} feasible complete trials by {loaded.quality_name}" if top is not None else
                 "feasible Pareto front" if loaded.multi_objective else f"best feasible trial by {loaded.quality_name}")
    selection += f" ({len(chosen)} trials)"
    (out / REPORT_FILE).write_text(report_markdown(loaded, frame, selection, specs, spec_files, plots, notes))
    manifest = {"study_name": loaded.study.study_name, "storage": loaded.where, "selection": selection,
                "trials": [{"trial": s.number, "file": spec_files[s.number], "differences": list(s.differences)}
                           for s in specs]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    files += [out / TRIALS_CSV, out / REPORT_FILE, out / MANIFEST]
    files += [out / name for name in plots.values() if name]
    return ExportResult(out, frame, specs, tuple(files), tuple(notes))
