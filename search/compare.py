"""Compare configurations on samples: train what is missing, score it, and decide declared claims.

A comparison is a set of **rows** (name -> spec), each trained under one :class:`Protocol` (data,
budget, optimiser) for some **training seeds** and scored on **sampling seeds** (FID, KID and LSD
of ``n`` DDIM samples against the data's reference split). Everything lands in one results JSON
(``{"protocol": ..., "models": {name: {"spec": ..., "runs": {seed: {"trained": ..., "samples":
{s: metrics}}}}}}``): a piece (a run trained, a sampling seed scored, a grid) is saved as soon as it
is finished, only the entries a process changed are written (under a lock), and a run a process is
working on is claimed (``WORK/NAME/seed-K.claim``), so several processes started with the same
command split the work and the file resumes where it stopped.

Runs of one training seed share their randomness (:func:`memekit.search.train.step_seed`: the
same data order, flips and noise draws at every step, and the same time-step uniforms; the initial
weights too when two rows have the same architecture), and every run's sampling seed s draws the
same noise. So runs of one seed are paired: :mod:`memekit.analysis.stats` fits every run's score
on its row and its training seed (blocked), and a claim's SE comes from the residual SD pooled over
all rows; the unblocked fit (SD pooled within rows) is reported beside it, so the table shows what
pairing bought. Only the sampling seeds that every run has enter a claim.

**Claims** are declared with a margin before the runs (house style 18): ``better A B`` (two-sided
test of ``A - B = 0``), ``noninferior A B`` (``A - B < margin``, one-sided) and ``equivalent A B``
(``|A - B| < margin``, two one-sided tests). Lower is better (KID, FID). Their p-values are
corrected together with Holm-Bonferroni; each verdict names the test, margin, dof and correction.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memekit.analysis import stats
from memekit.space import MemeSpec, spec_cost
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_text

from .train_config import TrainConfig
from .train_errors import TrainingPaused

if TYPE_CHECKING:
    import numpy as np

RESULTS_VERSION = 1
METRICS = {"kid": "kid_mean", "fid": "fid", "lsd": "lsd"}
CLAIM_KINDS = ("better", "noninferior", "equivalent")


class CompareError(MemekitError, ValueError):
    """A comparison that cannot run as asked (mixed protocols, a renamed spec, an unknown row, ...)."""


# ---- what is compared, and how -------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """How every row is trained and scored; stored in the results file, which refuses another."""

    data: str
    images: int = 100_000
    batch: int = 32
    lr: float = 1e-3
    warmup_images: int = 1000
    n: int = 1000  # samples per sampling seed
    steps: int = 25  # DDIM steps of the scored samples and of the grids
    preconditioning: str | None = None  # re-measured from the data for every row; None: each spec's own
    fid_protocol: str = "pytorch-fid"

    def train_config(self, seed: int, device: str | None) -> TrainConfig:
        steps = self.images // self.batch
        return TrainConfig(data=self.data, images=self.images, batch=self.batch, lr=self.lr,
                           warmup_images=self.warmup_images, seed=seed, val_images=256, val_every=0,
                           sample_every=0, sample_count=16, sample_steps=self.steps,
                           checkpoint_every=max(1, steps // 20), keep_last=1, device=device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Claim:
    """``kind`` of row ``a`` against row ``b`` on ``metric``; ``margin`` in the metric's units."""

    kind: str
    a: str
    b: str
    margin: float | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in CLAIM_KINDS:
            raise CompareError(f"unknown claim {self.kind!r}: choose {', '.join(CLAIM_KINDS)}")
        if self.kind != "better" and not (self.margin is not None and self.margin > 0):
            raise CompareError(f"a {self.kind} claim needs a margin > 0 declared before the runs (--margin)")


def declare_claims(results: dict, claims: Sequence[Claim], today: str) -> None:
    """Record ``claims`` in the results file with the date they were first declared; a claim already
    declared (same kind and rows) with another margin is refused: margins are fixed before the runs."""
    stored = results.setdefault("claims", [])
    for c in claims:
        old = next((d for d in stored if (d["kind"], d["a"], d["b"]) == (c.kind, c.a, c.b)), None)
        if old is None:
            stored.append({"kind": c.kind, "a": c.a, "b": c.b, "margin": c.margin, "label": c.label,
                           "declared": today})
        elif old.get("margin") != c.margin:
            raise CompareError(f"{c.kind} {c.a}:{c.b} was declared on {old['declared']} with margin "
                               f"{old.get('margin')}: a margin is fixed before the runs (declare a new claim)")


def stored_claims(results: dict) -> list[Claim]:
    """The claims declared in the results file, in their order."""
    return [Claim(d["kind"], d["a"], d["b"], d.get("margin"), d.get("label", "")) for d in results.get("claims", [])]


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    difference: stats.Difference
    p: float
    p_holm: float
    met: bool | None  # None: undecided for want of an SE
    text: str


@dataclass
class Comparison:
    """A results file and the rows asked of it."""

    path: Path
    protocol: Protocol
    rows: dict[str, MemeSpec]
    work: Path
    results: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)

    def save(self) -> None:
        """Write this process's changes to the results file (see :func:`merge_save`)."""
        merge_save(self.path, self.results, self.base)


# ---- the results file -------------------------------------------------------------------------------
def load_results(path: Path) -> dict:
    """The results file (an empty one when missing); a one-line error for anything else."""
    if not path.is_file():
        return {"version": RESULTS_VERSION, "models": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CompareError(f"{path} is not a readable results JSON ({err}): move it away or pass another "
                           "--results") from None
    if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
        raise CompareError(f"{path} is not a memekit compare results file: move it away or pass another --results")
    data.setdefault("models", {})
    return data


def merge_save(path: Path, results: dict, base: dict) -> None:
    """Write ``results``' changes since ``base`` atomically into ``path``, under a lock, keeping what
    other processes saved meanwhile (each owns its entries: a row's run, a sampling seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = load_results(path)
        _merge(merged, results, base)
        atomic_write_text(path, json.dumps(merged, indent=1) + "\n")
    base.clear()
    base.update(json.loads(json.dumps(results)))


def _merge(into: dict, new: dict, old: dict) -> None:
    for key, value in new.items():
        before = old.get(key) if isinstance(old, dict) else None
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, before if isinstance(before, dict) else {})
        elif value != before:
            into[key] = value


def open_comparison(path: str | Path, protocol: Protocol, rows: Mapping[str, MemeSpec], work: str | Path,
                    say: Callable[[str], None] = print) -> Comparison:
    """The comparison in ``path`` for ``rows`` under ``protocol``: refuses a file made under another
    protocol and a row name that holds another spec there (before anything is written)."""
    path = Path(path)
    results = load_results(path)
    stored = results.get("protocol")
    if stored is not None and stored != protocol.to_dict():
        diff = next(k for k in protocol.to_dict() if stored.get(k) != protocol.to_dict()[k])
        raise CompareError(f"{path} was made with {diff} {stored.get(diff)!r}, this command gives "
                           f"{protocol.to_dict()[diff]!r}: use the same settings or another --results")
    for name, spec in rows.items():
        entry = results["models"].get(name)
        if entry is not None and entry["spec"] != spec.to_dict():
            raise CompareError(f"row {name!r} in {path} holds another spec: give this one another name (NAME=SPEC)")
    if stored is None and results["models"]:
        say(f"{path}: adopting its {len(results['models'])} rows under this protocol (the file recorded none)")
    results["protocol"] = protocol.to_dict()
    base = json.loads(json.dumps({**results, "protocol": stored} if stored is None else results))
    return Comparison(path, protocol, dict(rows), Path(work), results, base)


# ---- work -----------------------------------------------------------------------------------------------
def run_dir(comparison: Comparison, name: str, seed: int) -> Path:
    return comparison.work / name / f"seed-{seed}"


def missing_work(comparison: Comparison, train_seeds: int, sampling_seeds: int,
                 extra: Mapping[str, int] | None = None) -> list[tuple[str, int, list[int]]]:
    """``(row, training seed, sampling seeds still to score)`` for every run that is not finished
    (``extra``: more training seeds for some rows)."""
    todo = []
    for name in comparison.rows:
        runs = comparison.results["models"].get(name, {}).get("runs", {})
        for seed in range((extra or {}).get(name, train_seeds)):
            run = runs.get(str(seed), {})
            wanted = [s for s in range(sampling_seeds) if str(s) not in run.get("samples", {})]
            if run.get("trained", {}).get("images") != comparison.protocol.images or wanted:
                todo.append((name, seed, wanted))
    return todo


class Claimed:
    """An exclusive claim on one run (``seed-K.claim`` beside its folder), so processes sharing the
    results file never train the same run; a claim whose process died is taken over."""

    def __init__(self, folder: Path) -> None:
        self.file = folder.with_name(folder.name + ".claim")

    def __enter__(self) -> bool:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if _alive(self.file):
                    self.held = False
                    return False
                self.file.unlink(missing_ok=True)  # its process is gone
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            self.held = True
            return True
        self.held = False
        return False

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.file.unlink(missing_ok=True)


def _alive(claim: Path) -> bool:
    try:
        pid = int(claim.read_text().strip() or 0)
        os.kill(pid, 0)
    except (ValueError, OSError):
        return False
    return True


def run_comparison(comparison: Comparison, train_seeds: int = 1, sampling_seeds: int = 1,
                   extra_seeds: Mapping[str, int] | None = None, device: str | None = None,
                   weights: str | None = None, deadline: float | None = None,
                   say: Callable[[str], None] = print, progress: bool = True) -> bool:
    """Train and score every missing run (``train_seeds`` per row, ``extra_seeds[row]`` for some);
    False when the deadline stopped it or other processes still hold runs. Resumable."""
    done = True
    for name, seed, _ in missing_work(comparison, train_seeds, sampling_seeds, extra_seeds):
        folder = run_dir(comparison, name, seed)
        with Claimed(folder) as mine:
            if not mine:
                say(f"{name} seed {seed}: another process works on it; skipped")
                done = False
                continue
            comparison.results = _reload(comparison)
            if not _finish_run(comparison, name, seed, sampling_seeds, device, weights, deadline, say, progress):
                return False
    return done


def _reload(comparison: Comparison) -> dict:
    """The file as other processes left it (``base`` follows it), with this process's protocol."""
    fresh = load_results(comparison.path)
    comparison.base.clear()
    comparison.base.update(json.loads(json.dumps(fresh)))
    fresh["protocol"] = comparison.protocol.to_dict()
    return fresh


def _finish_run(comparison: Comparison, name: str, seed: int, sampling_seeds: int, device: str | None,
                weights: str | None, deadline: float | None, say: Callable[[str], None], progress: bool) -> bool:
    """Train (or resume) one run, then score its missing sampling seeds and draw seed 0's grid; False
    when the deadline stopped it."""
    spec = comparison.rows[name]
    entry = comparison.results["models"].setdefault(name, {"spec": spec.to_dict(), "runs": {}})
    run = entry["runs"].setdefault(str(seed), {"samples": {}})
    folder = run_dir(comparison, name, seed)
    if run.get("trained", {}).get("images") != comparison.protocol.images:
        say(f"== {name}, training seed {seed}: training ({comparison.protocol.images:,} images) in {folder}")
        try:
            run["trained"] = train_run(spec, comparison.protocol.train_config(seed, device), folder, deadline, say,
                                       progress)
        except TrainingPaused as paused:
            say(f"{name} seed {seed}: {paused}")
            return False
        run["samples"] = {}  # samples of an earlier budget no longer describe this run
        run.pop("grid", None)
        comparison.save()
    for s in range(sampling_seeds):
        if str(s) in run["samples"]:
            continue
        if _late(deadline):
            return False
        _check_folder(folder, name, seed)
        started = time.time()
        say(f"{name} seed {seed}: sampling seed {s}: {comparison.protocol.n:,} samples, FID / KID / LSD")
        run["samples"][str(s)] = score_run(folder, comparison.protocol, s, device, weights)
        comparison.save()
        m = run["samples"][str(s)]
        say(f"{name} seed {seed}: sampling seed {s}: FID {m['fid']:.2f}, KID {m['kid_mean']:.4f} "
            f"({time.time() - started:.0f} s)")
    if seed == 0 and "grid" not in run and not _late(deadline) and _has_checkpoint(folder):
        figures = figures_dir(comparison)
        run["grid"] = draw_grid(folder, figures / f"grid-{name}.png", comparison.protocol.steps, device,
                                real=(comparison.protocol.data, figures / "grid-real.png"))
        comparison.save()
    return not _late(deadline)


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.time() > deadline


def _has_checkpoint(folder: Path) -> bool:
    from .checkpoint import latest_checkpoint

    return folder.is_dir() and latest_checkpoint(folder) is not None


def _check_folder(folder: Path, name: str, seed: int) -> None:
    if not _has_checkpoint(folder):
        raise CompareError(f"{name} seed {seed} is trained in the results file but {folder} holds no checkpoint "
                           "(its scores were made elsewhere): score it there, or ask only the sampling seeds it has")


def figures_dir(comparison: Comparison) -> Path:
    """``RESULTS.json`` -> ``RESULTS/``: the grids beside the results file."""
    return comparison.path.with_suffix("")


def draw_grid(folder: Path, path: Path, steps: int, device: str | None, n: int = 64,
              real: tuple[str, Path] | None = None) -> str:
    """``n`` samples of sampling seed 0 as a PNG grid (a latent run's decoded by its recorded
    autoencoder), images below 96 px upscaled to about 96 px (nearest, so pixels show); above 64 px
    only the first 16, to keep the file small. ``real`` = (data, png): also the data's reference images
    at the samples' size (:func:`draw_real_grid`), when that png does not exist yet."""
    from .sampling import load_model, run_decoder, sample_images

    model, spec, state = load_model(folder, device=device or "cpu")
    decoder = run_decoder(state, None, device or "cpu")
    if spec.experts[0].resolution * (decoder.resolution_factor if decoder is not None else 1) > 64:
        n = min(n, 16)
    images = sample_images(model, spec, n, steps=steps, seed=0, device=device or "cpu", batch=n, progress=False,
                           decoder=decoder)
    _save_upscaled(images, path)
    if real is not None and not real[1].exists():
        draw_real_grid(real[0], images.shape[1], real[1], n)
    return path.name


def draw_real_grid(data: str, side: int, path: Path, n: int = 64) -> str:
    """``n`` images evenly spaced through ``data``'s reference split (for latents, that of the images they
    were encoded from; spaced, because folders come sorted by class or name) at ``side`` px, upscaled as
    :func:`draw_grid` upscales samples: what its grids are read against."""
    import numpy as np

    from memekit.analysis.data import load_images
    from memekit.analysis.latents import image_source

    images = load_images(image_source(data), side, split="reference", progress=False)
    picks = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int))
    _save_upscaled(images[picks], path)
    return path.name


def _save_upscaled(images: np.ndarray, path: Path) -> None:
    from .sampling import save_image_grid

    scale = max(1, 96 // images.shape[1])
    save_image_grid(images.repeat(scale, axis=1).repeat(scale, axis=2), path, nrow=8)


def train_run(spec: MemeSpec, config: TrainConfig, folder: Path, deadline: float | None,
              say: Callable[[str], None], progress: bool) -> dict[str, Any]:
    """Train one run (resuming its folder); the budget seen and the final validation figures."""
    from .train import train

    result = train(spec, config, folder, progress=progress, deadline=deadline, say=say)
    keys = ("val_loss", "val_loss_quarters", "val_rel", "val_rel_quarters", "val_rel_per_expert")
    return {"images": result.images_seen, "images_per_expert": result.images_per_expert,
            **{k: result.val.get(k) for k in keys}}


def score_run(folder: Path, protocol: Protocol, sampling_seed: int, device: str | None,
              weights: str | None) -> dict[str, Any]:
    """FID / KID / LSD of one sampling seed's ``n`` samples against the reference split."""
    from memekit.analysis.fid import reference_source

    from .metrics import sample_metrics

    m = sample_metrics(folder, reference_source(protocol.data), n=protocol.n, steps=protocol.steps, seeds=1,
                       first_seed=sampling_seed, device=device, weights=weights, protocol=protocol.fid_protocol)
    return {**m.per_seed[0], "n": m.n, "n_ref": m.n_ref, "weights": m.weights_label, "protocol": m.protocol}


def prepared_rows(rows: Mapping[str, MemeSpec], protocol: Protocol) -> dict[str, MemeSpec]:
    """Every row with ``protocol.preconditioning`` measured once from the data's training split (the
    same skip for every row, as the rows must differ only in what is compared); unchanged for None."""
    if protocol.preconditioning is None or not rows:
        return dict(rows)
    from memekit.analysis.linear import preconditioned_for_data

    measured: dict[int, Any] = {}
    out = {}
    for name, spec in rows.items():
        res = spec.experts[0].resolution
        if res not in measured:
            measured[res] = preconditioned_for_data(spec.diffusion, protocol.preconditioning, protocol.data, res)
        diffusion = dataclasses.replace(measured[res], timesteps=spec.diffusion.timesteps,
                                        schedule=spec.diffusion.schedule, prediction=spec.diffusion.prediction)
        out[name] = dataclasses.replace(spec, diffusion=diffusion)
    return out


# ---- reading the results ---------------------------------------------------------------------------------
def run_scores(results: dict, metric: str, rows: Iterable[str] | None = None,
               sampling: set[str] | None = None) -> tuple[dict[str, dict[str, float]], set[str]]:
    """``{row: {training seed: score}}`` for the scored runs of ``rows`` (default all), each run's score
    the mean over the sampling seeds that every one of those runs has (or over ``sampling``)."""
    key = METRICS.get(metric, metric)
    models = results["models"]
    names = [n for n in (rows if rows is not None else models) if n in models]
    runs = {n: {s: r["samples"] for s, r in models[n]["runs"].items() if r.get("samples")} for n in names}
    if sampling is None:
        sets = [set(samples) for by_seed in runs.values() for samples in by_seed.values()]
        sampling = set.intersection(*sets) if sets else set()
    out = {n: {s: sum(samples[k][key] for k in sampling) / len(sampling) for s, samples in by_seed.items()}
           for n, by_seed in runs.items() if sampling}
    return {n: v for n, v in out.items() if v}, sampling


def decide(results: dict, claims: Sequence[Claim], metric: str = "kid", alpha: float = stats.ALPHA,
           blocked: bool = True, rows: Iterable[str] | None = None) -> tuple[list[Verdict], stats.RowFit | None]:
    """The verdict of every claim: each difference from one fit of all runs (``rows``: the family;
    default every row), the p-values corrected with Holm over all the claims. A claim whose rows are
    not scored yet counts in the family with p = 1 (it can reject nothing) and stays undecided."""
    values, sampling = run_scores(results, metric, rows)
    fit = stats.fit_rows(values, blocked=blocked) if values else None
    nan = stats.Difference(math.nan, math.nan, math.nan)
    diffs = [fit.contrast({c.a: 1.0, c.b: -1.0}) if fit and {c.a, c.b} <= set(values) else nan for c in claims]
    pvals = [_claim_p(c, d) for c, d in zip(claims, diffs, strict=True)]
    adjusted = stats.holm([1.0 if math.isnan(p) else p for p in pvals])
    verdicts = []
    for c, d, p, q in zip(claims, diffs, pvals, adjusted, strict=True):
        if math.isnan(d.diff):
            verdicts.append(Verdict(c, d, p, q, None, f"{c.label or c.kind}: {c.a} against {c.b} waits for "
                                                      "rows not scored yet"))
            continue
        met = None if math.isnan(p) else bool(q < alpha and (c.kind != "better" or d.diff < 0))
        verdicts.append(Verdict(c, d, p, q, met, _verdict_text(c, d, p, q, met, metric, alpha, len(claims), sampling)))
    return verdicts, fit


def _claim_p(claim: Claim, d: stats.Difference) -> float:
    if claim.kind == "noninferior":
        return stats.noninferiority_p(d, claim.margin)
    if claim.kind == "equivalent":
        return stats.equivalence_p(d, claim.margin)
    return d.p


def _verdict_text(c: Claim, d: stats.Difference, p: float, q: float, met: bool | None, metric: str, alpha: float,
                  family: int, sampling: set[str]) -> str:
    lo, hi = d.interval(1 - alpha)
    if c.kind == "better":
        test = "two-sided t-test of A - B = 0"
    elif c.kind == "noninferior":
        test = f"non-inferiority at margin {c.margin:g} (one-sided t-test, H0: A - B >= {c.margin:g})"
    else:
        test = f"equivalence at margin +-{c.margin:g} (two one-sided t-tests)"
    word = {None: "undecided (no SE)", True: {"better": "A better", "noninferior": "non-inferior",
                                              "equivalent": "equivalent"}[c.kind],
            False: {"better": "not shown better", "noninferior": "non-inferiority not shown",
                    "equivalent": "equivalence not shown"}[c.kind]}[met]
    if c.kind == "better" and met is False and q < alpha and d.diff > 0:
        word = "B better (the claim's opposite)"
    label = f"{c.label}: " if c.label else ""
    return (f"{label}{metric.upper()} {c.a} - {c.b} = {d.diff:+.4f} +- {d.se:.4f} ({100 * (1 - alpha):.0f} % CI "
            f"{lo:+.4f} .. {hi:+.4f}; {d.dof:g} dof; sampling seed{'s' * (len(sampling) > 1)} "
            f"{', '.join(sorted(sampling))}); {test}: p = {p:.3g}, Holm over {family} claims p = {q:.3g} -> {word}")


# ---- the table ------------------------------------------------------------------------------------------
def table(results: dict, rows: Iterable[str] | None = None, metric: str = "kid") -> list[str]:
    """One line per row: cost, training seeds, KID and FID over training seeds (each run on the shared
    sampling seeds; mean +- SE over training seeds), and the final validation loss of seed 0."""
    models = results["models"]
    names = [n for n in (rows if rows is not None else models) if n in models]
    kid, sampling = run_scores(results, "kid", names)
    fid, _ = run_scores(results, "fid", names, sampling)
    on = ", ".join(sorted(sampling)) or "-"
    lines = [f"| row | params | MMACs/step | training seeds | KID (sampling seeds {on}) | FID | val loss, seed 0 |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        cost = spec_cost(MemeSpec.from_dict(models[name]["spec"]), 50)
        val = models[name]["runs"].get("0", {}).get("trained", {}).get("val_loss")
        cells = []
        for values, digits in ((kid, 4), (fid, 1)):
            seeds = list(values.get(name, {}).values())
            if not seeds:
                cells.append("not scored")
                continue
            e = stats.mean_se(seeds)
            cells.append(f"{e.mean:.{digits}f}" + ("" if e.n < 2 else f" +- {e.se:.{digits}f}"))
        lines.append(f"| {name} | {cost.params / 1e6:.2f}M | {cost.mean_macs_per_step / 1e6:.1f} | "
                     f"{len(kid.get(name, {})) or '-'} | {cells[0]} | {cells[1]} | "
                     f"{'-' if val is None else f'{val:.4f}'} |")
    return lines


def quality_cost_frame(results: dict, rows: Iterable[str] | None = None, steps: int = 50) -> Any:
    """One row per scored row: trajectory GMACs (DDIM-``steps``, batch 1) and KID / FID, mean +- SE over
    training seeds (each run on the shared sampling seeds), as a DataFrame for
    :func:`memekit.analysis.plots.quality_cost_figure`."""
    import pandas as pd

    models = results["models"]
    kid, sampling = run_scores(results, "kid", rows)
    fid, _ = run_scores(results, "fid", rows, sampling)
    out = []
    for name in kid:
        k, f = stats.mean_se(list(kid[name].values())), stats.mean_se(list(fid[name].values()))
        out.append({"row": name,
                    "gmacs": spec_cost(MemeSpec.from_dict(models[name]["spec"]), steps).trajectory_macs / 1e9,
                    "kid": k.mean, "kid_se": k.se, "fid": f.mean, "fid_se": f.se, "training_seeds": k.n})
    return pd.DataFrame(out)


def pairing_line(results: dict, rows: Iterable[str] | None = None, metric: str = "kid") -> str:
    """What pairing by training seed bought: the residual SD of the blocked and the unblocked fit."""
    values, _ = run_scores(results, metric, rows)
    if not values:
        return "pairing: nothing scored"
    blocked, unblocked = stats.fit_rows(values, True), stats.fit_rows(values, False)
    b, u = blocked.residual, unblocked.residual
    ratio = "" if not (b.sd > 0 and u.sd > 0) else f"; variance ratio {(u.sd / b.sd) ** 2:.2f}"
    return (f"pairing by training seed: residual SD of {METRICS.get(metric, metric)} {b.sd:.4g} blocked "
            f"({b.dof} dof, 95 % CI {b.low:.3g} .. {b.high:.3g}) against {u.sd:.4g} unblocked ({u.dof} dof, "
            f"{u.low:.3g} .. {u.high:.3g}){ratio}")


def report(results: dict, claims: Sequence[Claim], metric: str = "kid", blocked: bool = True,
           rows: Iterable[str] | None = None) -> str:
    """The table, the pairing line and every claim's verdict, as markdown."""
    lines = table(results, rows, metric)
    first = next((s for e in results["models"].values() for r in e["runs"].values()
                  for s in r.get("samples", {}).values()), None)
    if first is not None:
        lines.append(f"\nFID/KID: n = {first['n']} samples per sampling seed vs {first['n_ref']} reference images, "
                     f"protocol {first['protocol']}, weights: {first['weights']}; "
                     f"{pairing_line(results, rows, metric)}.")
    verdicts, _ = decide(results, claims, metric, blocked=blocked, rows=rows)
    lines += [""] + [f"- {v.text}" for v in verdicts]
    return "\n".join(lines)


# ---- speed and the floor ---------------------------------------------------------------------------------
def train_rate(trainer: Any, steps: int, warmup: int = 2) -> float:
    """Training img/s of ``trainer`` (a :class:`memekit.search.train.Trainer` with its data loaded):
    ``steps`` optimiser steps timed after ``warmup`` untimed ones."""
    for _ in range(warmup):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps * trainer.config.batch / (time.perf_counter() - start)


def speed_rounds(specs: Mapping[str, MemeSpec], protocol: Protocol, rounds: int = 10, n: int = 100,
                 train_steps: int = 20, device: str | None = None,
                 say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """DDIM sampling img/s (one batch of ``n``, ``protocol.steps`` steps) and training img/s
    (``train_steps`` steps of the protocol's batch after 2 warm-up steps) of every spec, interleaved over
    ``rounds`` rounds in this one process, so each round's ratios share the machine's state. Every
    round's value is kept unrounded (``sampling_rounds``, ``train_rounds``); weights are freshly
    initialised (speed does not depend on their values). Each row's trainer and data are built once, in
    the first round, and train on in later ones: loading the data took longer than the timing itself."""
    import tempfile

    import torch

    from memekit.analysis.device import resolve_device
    from memekit.space import MultiExpert

    from .sampling import sample_images
    from .train import Trainer

    dev = str(resolve_device(device))
    rates: dict[str, dict[str, list[float]]] = {name: {"sample": [], "train": []} for name in specs}
    trainers: dict[str, Trainer] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, spec in specs.items():
                model = MultiExpert(spec).to(dev).eval()
                start = time.perf_counter()
                sample_images(model, spec, n, steps=protocol.steps, seed=0, device=dev, batch=n, progress=False)
                rates[name]["sample"].append(n / (time.perf_counter() - start))
                if name not in trainers:
                    images = (train_steps + 2) * protocol.batch * rounds
                    config = dataclasses.replace(protocol.train_config(0, dev), images=images)
                    trainers[name] = Trainer(spec, config, Path(tmp) / name, progress=False)
                    trainers[name].load_data()
                rates[name]["train"].append(train_rate(trainers[name], train_steps))
                say(f"timing round {r + 1}/{rounds}, {name}: sampling {rates[name]['sample'][-1]:.3f} img/s, "
                    f"training {rates[name]['train'][-1]:.3f} img/s")
    return {name: {"sampling_rounds": v["sample"], "train_rounds": v["train"], "sampled": n,
                   "train_steps": train_steps, "threads": torch.get_num_threads(), "device": dev}
            for name, v in rates.items()}


def speed_ratio(timing: Mapping[str, Any], a: str, b: str, key: str = "sampling_rounds") -> stats.Estimate:
    """``a``'s img/s over ``b``'s: mean +- SE of the per-round ratios (rounds time every row back to back)."""
    ra, rb = timing[a][key], timing[b][key]
    if len(ra) != len(rb):
        raise CompareError(f"{a} and {b} were timed in different runs ({len(ra)} and {len(rb)} rounds): time them "
                           "together")
    return stats.mean_se([x / y for x, y in zip(ra, rb, strict=True)])


def floor_metrics(protocol: Protocol, resolution: int, device: str | None = None,
                  weights: str | None = None) -> dict[str, Any]:
    """What a perfect model scores at this n: FID / KID / LSD of ``protocol.n`` training images (the
    first of the training split) against the reference split, with the features samples are scored with; for
    a latent file, of the images it was encoded from (``resolution``: their side)."""
    from memekit.analysis.data import load_images
    from memekit.analysis.fid import features, frechet_distance, reference_source
    from memekit.analysis.kid import kid
    from memekit.analysis.latents import image_source
    from memekit.analysis.spectra import log_spectral_distance

    source, images = reference_source(protocol.data), image_source(protocol.data)
    reference = features(source, None, resolution=resolution, split="reference", device=device, weights=weights,
                         protocol=protocol.fid_protocol)
    train = features(source, protocol.n, resolution=resolution, split="train", device=device, weights=weights,
                     protocol=protocol.fid_protocol)
    kid_mean, kid_std = kid(train, reference)
    lsd = log_spectral_distance(load_images(images, resolution, limit=protocol.n, split="train", progress=False),
                                load_images(images, resolution, split="reference", progress=False))
    return {"fid": frechet_distance(train.statistics.mu, train.statistics.sigma, reference.statistics.mu,
                                    reference.statistics.sigma),
            "kid_mean": kid_mean, "kid_std": kid_std, "lsd": lsd.lsd, "n": train.n, "n_ref": reference.n,
            "weights": reference.weights_label, "protocol": protocol.fid_protocol}
