"""Export a finished (or running) study: chosen specs as JSON, a trials table, plots and a report.

Data first, then drawing: the study is opened and its trials chosen and rebuilt by
:mod:`memekit.search.results`; :func:`trials_frame` returns one row per trial; the renderers
(:func:`plot_pareto`, :func:`plot_history`, :func:`plot_importances`) return Figures and never show
or save; :func:`export_study` writes everything.

The speed-up column is the trajectory MACs of ``single-large`` **on the study's own backbone**
(:func:`memekit.space.presets.backbone_presets` of the space's base expert: the same stages, blocks,
head grid and pools at 1.75x the width, about 3x the MACs per step of one expert; same number of
DDIM steps, :func:`memekit.space.spec_cost`) divided by the trial's trajectory MACs, so a study on
a small CPU backbone is not credited with the cost of the full-width preset. It is a MAC ratio
against an **untrained** ``single-large``: nothing in the study trains or scores it, so it says nothing
of quality.

The report knows its noise (:func:`noise_frame`): with the proxy's seed SD measured
(:func:`memekit.search.results.seed_noise`), each difference of the best trial from the other exported
trials and the warm starts is tested (two single runs: SE ``sqrt(2) x SD``, the pooled SD's dof,
Holm over the comparisons, :mod:`memekit.analysis.stats`) and read "indistinguishable" or "beyond the
noise"; without it, the report says the noise is unmeasured and how to measure it. It also says which
trials were random start-up draws of the sampler (:func:`memekit.search.results.startup_phase`), which
prior the study seeded, each warm start's projection gap (:func:`memekit.search.warmstart.warm_start_label`)
and how many trials stand behind the parameter importances.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from memekit.analysis.stats import ALPHA, Difference, holm
from memekit.space import MemeSpec, save_spec
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_json, atomic_write_text, prepare_output_dir
from memekit.space.presets import backbone_presets

from .results import (
    LoadedStudy,
    SeedNoise,
    TrialSpec,
    cost_of,
    is_feasible,
    prior_source,
    seed_noise,
    select_trials,
    spec_of,
    startup_phase,
    trial_spec,
    trial_state,
)
from .searchspace import SearchSpace, param_label
from .warmstart import draw_label, prior_source_text, startup_note, warm_start_label

SPEED_UP_BASELINE = "single-large"
PLOT_FILES = {"pareto": "pareto_front.png", "history": "optimization_history.png",
              "importances": "param_importances.png"}
REPORT_FILE, TRIALS_CSV, MANIFEST = "report.md", "trials.csv", "export.json"
FRAME_COLUMNS = ("trial", "state", "warm_start", "warm_start_label", "n_experts", "intervals", "attention_shares",
                 "soft_assignment", "quality", "cost", "trajectory_gmacs", "params", "speed_up", "failure_reason")
SPEED_UP_HEADER = "MAC ratio vs untrained single-large"
# importances over fewer trials than this (in all, or per parameter) are flagged as unreliable
IMPORTANCE_MIN_TRIALS, IMPORTANCE_MIN_PER_PARAMETER = 30, 5


class ExportError(MemekitError, ValueError):
    """A study cannot be exported."""


def baseline_spec(space: SearchSpace) -> MemeSpec:
    """``single-large`` on the space's backbone (see the module docstring)."""
    return backbone_presets(space.base_expert, space.diffusion)[SPEED_UP_BASELINE]


def baseline_trajectory_macs(space: SearchSpace, sampling_steps: int) -> int:
    """Trajectory MACs of :func:`baseline_spec` (batch 1)."""
    return cost_of(baseline_spec(space), sampling_steps).trajectory_macs


# ---- the table ----------------------------------------------------------------------------------------
def _trajectory_gmacs(trial: FrozenTrial, spec: MemeSpec | None, sampling_steps: int) -> float:
    if "trajectory_gmacs" in trial.user_attrs:
        return float(trial.user_attrs["trajectory_gmacs"])
    return cost_of(spec, sampling_steps).trajectory_macs / 1e9 if spec is not None else math.nan


def _row(loaded: LoadedStudy, trial: FrozenTrial, baseline_gmacs: float) -> dict[str, Any]:
    spec = spec_of(trial, loaded.space, loaded.prior)
    gmacs = _trajectory_gmacs(trial, spec, loaded.config.sampling_steps)
    values = trial.values or []
    quality = values[0] if values else math.nan
    cost = values[1] if loaded.multi_objective and len(values) > 1 else gmacs
    params = trial.user_attrs.get("params_total")
    return {
        "trial": trial.number, "state": trial_state(trial), "warm_start": trial.user_attrs.get("warm_start", ""),
        "warm_start_label": warm_start_label(trial.user_attrs.get("warm_start", ""),
                                             trial.user_attrs.get("projection_gap")),
        "n_experts": spec.n_experts if spec else None,
        "intervals": spec.intervals if spec else None,
        "attention_shares": tuple(e.attention_share for e in spec.experts) if spec else None,
        "soft_assignment": spec.soft_assignment if spec else None,
        "quality": quality, "cost": cost, "trajectory_gmacs": gmacs,
        "params": params if params is not None else (cost_of(spec, 1).params if spec else None),
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
    large = baseline_spec(loaded.space).experts[0]
    frame.attrs.update(quality=loaded.quality_name, cost=loaded.cost_name, baseline=SPEED_UP_BASELINE,
                       baseline_backbone=f"width {large.base_width}, {large.n_stages} stages, "
                                         f"head_dim {large.head_dim}",
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


WARM_MARKERS = ("*", "P", "X", "D", "^", "v", "s")
# offsets (points) tried in turn for a trial number's label, nearest first
LABEL_OFFSETS = ((4, 4), (4, -11), (-16, 4), (-16, -11), (4, 14), (4, -21), (-16, 14), (-16, -21), (18, -4),
                 (-30, -4))


def plot_pareto(loaded: LoadedStudy, frame: pd.DataFrame) -> Figure:
    """Optuna's Pareto-front plot (quality vs cost; single-objective studies: value vs trajectory
    GMACs) with each warm start marked by its own symbol and named, projection gap included, in the
    legend; exported trials numbered beside their points, each number placed where it overlaps no
    other (:func:`place_labels`)."""
    from optuna.visualization import matplotlib as ovm

    names = [frame.attrs["quality"], frame.attrs["cost"]]
    targets = None
    if not loaded.multi_objective:
        def targets(t: FrozenTrial) -> tuple[float, float]:
            return t.values[0], float(t.user_attrs.get("trajectory_gmacs", math.nan))
    ax = _optuna_axes(ovm.plot_pareto_front, loaded.study, target_names=names, targets=targets)
    drawn = frame[frame["state"].eq("COMPLETE")]
    drawn = drawn[drawn["quality"].map(math.isfinite) & drawn["cost"].map(math.isfinite)]
    warm = drawn[drawn["warm_start"] != ""]
    for i, row in enumerate(warm.itertuples()):
        ax.scatter([row.quality], [row.cost], marker=WARM_MARKERS[i % len(WARM_MARKERS)], s=160,
                   facecolors="none", edgecolors="black", linewidths=1.2, zorder=3,
                   label=f"warm start #{row.trial}: {row.warm_start_label}")
    if len(warm):
        ax.legend(fontsize=7, loc="best")
    exported = drawn[drawn["exported"]]
    place_labels(ax, [(f"#{r.trial}", r.quality, r.cost) for r in exported.itertuples()])
    return ax.figure


def place_labels(ax: Any, labels: Sequence[tuple[str, float, float]], fontsize: int = 7) -> list[Any]:
    """Annotate ``(text, x, y)`` points so no two labels overlap: each takes the first offset of
    :data:`LABEL_OFFSETS` whose box (measured with the Agg renderer before anything is drawn) meets no
    label placed before (the last offset when none is free); returns the annotations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.font_manager import FontProperties
    from matplotlib.transforms import Bbox

    canvas = ax.figure.canvas if isinstance(ax.figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(ax.figure)
    renderer, font, scale = canvas.get_renderer(), FontProperties(size=fontsize), ax.figure.dpi / 72
    placed, boxes = [], []
    for text, x, y in labels:
        width, height, descent = renderer.get_text_width_height_descent(text, font, ismath=False)
        px, py = ax.transData.transform((x, y))
        for dx, dy in LABEL_OFFSETS:  # text anchored at its left baseline
            box = Bbox.from_bounds(px + dx * scale, py + dy * scale - descent, width, height)
            if not any(box.overlaps(other) for other in boxes):
                break
        boxes.append(box)
        placed.append(ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                  color="dimgray"))
    return placed


def plot_history(loaded: LoadedStudy) -> Figure:
    """Optuna's optimisation history of the quality objective."""
    from optuna.visualization import matplotlib as ovm

    target = (lambda t: t.values[0]) if loaded.multi_objective else None
    name = loaded.quality_name
    return _optuna_axes(ovm.plot_optimization_history, loaded.study, target=target, target_name=name).figure


def importance_basis(loaded: LoadedStudy) -> tuple[int, int]:
    """``(trials, parameters)`` behind the parameter importances: feasible complete trials, and the
    parameters they sampled."""
    feasible = [t for t in loaded.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_feasible(t)]
    return len(feasible), len({name for t in feasible for name in t.params})


def importance_caveat(trials: int, parameters: int) -> str:
    """How many trials stand behind the importances, and a warning below :data:`IMPORTANCE_MIN_TRIALS`
    trials or :data:`IMPORTANCE_MIN_PER_PARAMETER` trials per parameter."""
    per = trials / parameters if parameters else math.nan
    text = f"{trials} feasible complete trials, {parameters} parameters ({per:.2g} trials per parameter)"
    if trials < IMPORTANCE_MIN_TRIALS or not per >= IMPORTANCE_MIN_PER_PARAMETER:
        text += (f": fewer than {IMPORTANCE_MIN_TRIALS} trials or {IMPORTANCE_MIN_PER_PARAMETER} per parameter, so "
                 "the ranking is not reliable; read it as a guess")
    return text


def plot_importances(loaded: LoadedStudy) -> Figure:
    """Optuna's parameter importances for the quality objective, over feasible complete trials
    (Optuna's default evaluator), parameters named in words (:func:`param_label`), the title
    carrying the trial count and a warning (:func:`importance_caveat`); needs >= 2 trials."""
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
    copy.add_trials([_readable(t) for t in feasible])
    target = (lambda t: t.values[0]) if loaded.multi_objective else None
    ax = _optuna_axes(ovm.plot_param_importances, copy, target=target, target_name=loaded.quality_name)
    trials, parameters = importance_basis(loaded)
    unreliable = trials < IMPORTANCE_MIN_TRIALS or trials < IMPORTANCE_MIN_PER_PARAMETER * parameters
    ax.set_title(f"Parameter importances for {loaded.quality_name}: {trials} trials, {parameters} parameters"
                 + ("\ntoo few trials to rank the parameters reliably" if unreliable else ""), fontsize=9)
    return ax.figure


def _readable(trial: FrozenTrial) -> FrozenTrial:
    """``trial`` with its parameters named by :func:`param_label`."""
    return optuna.trial.create_trial(
        params={param_label(k): v for k, v in trial.params.items()},
        distributions={param_label(k): d for k, d in trial.distributions.items()},
        values=trial.values, constraints=None)


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
    head += ["trajectory GMACs", "params", SPEED_UP_HEADER, "state"]
    head += ["spec"] if spec_files else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in frame.itertuples(index=False):
        cells = [str(row.trial), row.warm_start_label or "", _fmt(row.n_experts), _intervals(row.intervals),
                 _shares(row.attention_shares),
                 "–" if row.soft_assignment is None else "/".join(f"{p:.2f}" for p in row.soft_assignment),
                 _fmt(row.quality)]
        cells += [_fmt(row.cost)] if c != "trajectory_gmacs" else []
        cells += [_fmt(row.trajectory_gmacs), _fmt(row.params),
                  "–" if math.isnan(row.speed_up) else f"{row.speed_up:.2f}x", row.state]
        cells += [f"[{spec_files[row.trial]}]({spec_files[row.trial]})"] if spec_files else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def noise_frame(loaded: LoadedStudy, frame: pd.DataFrame, noise: SeedNoise | None) -> pd.DataFrame:
    """The best feasible trial by quality against every other exported trial and every warm start:
    ``trial``, ``label``, ``difference`` (its quality minus the best's, >= 0), and with ``noise``
    (a seed SD of the study's quality) ``se`` (``sqrt(2) x SD``: two single runs), ``p`` (two-sided t
    with the pooled SD's dof), ``p_holm`` (Holm over the rows) and ``verdict``: "indistinguishable"
    or "beyond the noise" (at level ALPHA after Holm)."""
    done = frame[frame["state"].eq("COMPLETE") & frame["quality"].map(math.isfinite)].sort_values(["quality", "trial"])
    columns = ["trial", "label", "difference", "se", "p", "p_holm", "verdict"]
    if done.empty:
        return pd.DataFrame(columns=columns)
    best = done.iloc[0]
    others = done[(done["trial"] != best["trial"]) & (done["exported"] | done["warm_start"].ne(""))]
    rows = []
    for row in others.itertuples():
        d = Difference(float(row.quality - best["quality"]), noise.difference_se if noise else math.nan,
                       float(noise.sd.dof) if noise else math.nan, "two single runs")
        rows.append({"trial": row.trial, "label": row.warm_start_label or "exported", "difference": d.diff,
                     "se": d.se, "p": d.p})
    out = pd.DataFrame(rows, columns=columns[:5])
    out["p_holm"] = holm(out["p"].tolist()) if len(out) else []
    out["verdict"] = ["" if math.isnan(p) else "beyond the noise" if p < ALPHA else "indistinguishable"
                      for p in out["p_holm"]]
    out.attrs.update(best=int(best["trial"]),
                     best_label=best["warm_start_label"] or draw_label(loaded.config.sampler, int(best["trial"])))
    return out


def noise_markdown(loaded: LoadedStudy, frame: pd.DataFrame, noise: SeedNoise | None) -> list[str]:
    """The report's section on seed noise: :func:`noise_frame` of ``frame`` with ``noise`` when it
    is of the study's quality, else untested."""
    lines = ["## Differences and seed noise", ""]
    quality = loaded.quality_name
    if noise is not None and noise.quality != quality:
        noise = None
    table = noise_frame(loaded, frame, noise)
    if noise is None and quality != "val_loss" and seed_noise(loaded, "val_loss") is not None:
        lines.append(f"The seed noise measured for this study is of val_loss; the study ranks by {quality}, whose "
                     "noise is unmeasured: differences below are not tested. `memekit rerank` measures it "
                     f"(it ranks by {quality} when a training run records it).")
    elif noise is None:
        lines.append(f"**Seed noise unmeasured.** A proxy score is one training run; until the seed-to-seed SD of "
                     f"{quality} is known, no difference below can be told from an accident of the seed. Measure it "
                     f"with `memekit rerank {loaded.study_dir or 'STUDY_DIR'} --top 5 --seeds 2` (it retrains the "
                     "5 best trials with 2 more seeds and stores the result in the study), then export again.")
    else:
        sd = noise.sd
        lines.append(f"Proxy seed SD of {quality}: {sd.sd:.3g} (pooled over {len(noise.trials)} trials, {noise.runs} "
                     f"runs of {noise.source}; {sd.dof} dof, {sd.level:.0%} interval {sd.low:.3g}-{sd.high:.3g}). "
                     f"A difference between two single runs has SE sqrt(2) x SD = {noise.difference_se:.3g} (runs "
                     f"taken as independent); each is tested two-sided with {sd.dof} dof, Holm-corrected over the "
                     f"{len(table)} comparisons, at the {ALPHA:g} level.")
    if table.empty:
        return lines + ["", "No other exported trial or warm start to compare with.", ""]
    lines += ["", f"Best feasible trial by {quality}: #{table.attrs['best']} ({table.attrs['best_label']}).", "",
              f"| trial | warm start or exported | {quality} - best's | SE | p | p (Holm) | verdict |",
              "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        cells = [str(r.trial), r.label, f"{r.difference:+.3g}", _fmt(r.se, 3), _fmt(r.p, 3), _fmt(r.p_holm, 3),
                 r.verdict or "noise unmeasured"]
        lines.append("| " + " | ".join(cells) + " |")
    if noise is not None:
        within = int((table["verdict"] == "indistinguishable").sum())
        lines += ["", f"{within} of {len(table)} differences from the best trial are within the seed noise "
                      "(indistinguishable): their order is not a ranking."]
    return lines + [""]


def startup_markdown(loaded: LoadedStudy) -> str:
    """The report's line on the sampler's start-up phase (:func:`~memekit.search.results.startup_phase`)."""
    phase = startup_phase(loaded)
    note = startup_note(phase.sampler, phase.finished, len(phase.warm))
    if note is None:
        return f"- sampler {phase.sampler}: every finished trial is a warm start or proposed from the trials before it"
    numbers = ", ".join(str(n) for n in phase.random)
    flag = "**start-up phase:** " if phase.proposed == 0 else ""
    return f"- {flag}{note.removeprefix('start-up phase: ')} (random draws: trials {numbers})"


def _prior_lines(loaded: LoadedStudy) -> list[str]:
    source = prior_source(loaded)
    if source is None and loaded.prior is None:
        return []
    lines = [f"- {prior_source_text(source)}"]
    return lines + [f"  - binding: {c}" for c in (source or {}).get("constraints", [])]


def report_markdown(loaded: LoadedStudy, frame: pd.DataFrame, selection: str, specs: Sequence[TrialSpec],
                    spec_files: dict[int, str], plots: dict[str, str | None], notes: Sequence[str] = ()) -> str:
    """``report.md``: the study (its prior and sampler start-up), the exported trials, their
    differences against the seed noise, the spec check, the plots, all trials."""
    cfg, counts = loaded.config, frame["state"].value_counts().to_dict()
    noise = seed_noise(loaded, loaded.quality_name)
    gaps = frame[frame["warm_start_label"] != frame["warm_start"]]
    lines = [f"# Study `{loaded.study.study_name}`", "",
             f"- storage: `{loaded.where}`",
             f"- objective: {cfg.objective} ({', '.join(loaded.study.metric_names or cfg.metric_names())}, minimised); "
             f"space `{cfg.space}` at {frame.attrs['resolution']} px; data `{cfg.data}`; proxy "
             f"{cfg.proxy_images:,} images; preconditioning {cfg.preconditioning}; sampler {cfg.sampler}",
             "- trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
             startup_markdown(loaded), *_prior_lines(loaded),
             f"- exported: {selection}",
             f"- {SPEED_UP_HEADER}: a MAC ratio, not a timing, against a `{frame.attrs['baseline']}` that nothing in "
             f"this study trains or scores (so it says nothing of quality), on this study's backbone "
             f"({frame.attrs['baseline_backbone']}) at {frame.attrs['resolution']} px: its trajectory MACs "
             f"({frame.attrs['baseline_gmacs']:.4g} GMACs over {frame.attrs['sampling_steps']} DDIM steps, "
             "memekit.space.spec_cost) / the trial's trajectory MACs"]
    if len(gaps):
        lines.append("- warm starts the space cannot hold exactly are labelled with their projection gap (the largest "
                     "change of a share, a boundary in steps or a p_n that the nearest point of the space makes)")
    lines += ["", "## Exported trials", "",
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
    lines += ["", *noise_markdown(loaded, frame, noise), "## Plots", ""]
    for title, name in plots.items():
        lines.append(f"![{title}]({name})" if name else f"- {title}: not drawn")
    lines.append(f"- parameter importances: {importance_caveat(*importance_basis(loaded))}")
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
    prepare_output_dir(out, overwrite, clear=("trial-*.json", "*.png", REPORT_FILE, TRIALS_CSV, MANIFEST))
    steps = loaded.config.sampling_steps
    specs = tuple(trial_spec(t, loaded.space, loaded.prior, steps) for t in chosen)
    files, spec_files = [], {}
    for s in specs:
        spec = dataclasses.replace(s.spec, name=f"{loaded.study.study_name}-trial-{s.number:05d}")
        spec_files[s.number] = f"trial-{s.number:05d}.json"
        files.append(save_spec(spec, out / spec_files[s.number]))
        if s.rebuilt_differs:
            files.append(save_spec(s.rebuilt, out / f"trial-{s.number:05d}.rebuilt.json"))
    frame = trials_frame(loaded, [t.number for t in chosen])
    table = loaded.study.trials_dataframe()
    labels = dict(zip(frame["trial"], frame["warm_start_label"], strict=True))
    table["warm_start_label"] = [labels.get(n, "") for n in table["number"]]
    table.to_csv(out / TRIALS_CSV, index=False)
    plots, notes = _draw_plots(loaded, frame, out)
    selection = (f"top {top} feasible complete trials by {loaded.quality_name}" if top is not None else
                 "feasible Pareto front" if loaded.multi_objective else f"best feasible trial by {loaded.quality_name}")
    selection += f" ({len(chosen)} trials)"
    atomic_write_text(out / REPORT_FILE, report_markdown(loaded, frame, selection, specs, spec_files, plots, notes))
    manifest = {"study_name": loaded.study.study_name, "storage": loaded.where, "selection": selection,
                "trials": [{"trial": s.number, "file": spec_files[s.number], "differences": list(s.differences)}
                           for s in specs]}
    atomic_write_json(out / MANIFEST, manifest)
    files += [out / TRIALS_CSV, out / REPORT_FILE, out / MANIFEST]
    files += [out / name for name in plots.values() if name]
    return ExportResult(out, frame, specs, tuple(files), tuple(notes))
