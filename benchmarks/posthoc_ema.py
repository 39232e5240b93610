"""Post-hoc EMA on UTKFace 32 px: KID against EMA length for one run's snapshots, and the best length
against the fixed-decay EMA that ``memekit train`` keeps (``ema_decay`` 0.999 with its warm-up).

Protocol (that of ``benchmarks/evidence.py``'s cpu32 profile): meme-paper rebuilt on the CPU32
backbone, Wiener preconditioning measured from the training split, 100,000 images at batch 32, lr
1e-3, warm-up 1,000 images, training seed 0; snapshots of the power-function EMA profiles sigma_rel
0.05 and 0.10 every 50 steps (``--posthoc-ema-every``; training is bit-identical to a run without
them). Each length of ``--sigma-rels`` is reconstructed (:mod:`memekit.search.ema`) and scored like the
fixed-decay EMA: KID (and FID) of 1,000 DDIM-25 samples per sampling seed against the reference split,
offline Inception (:func:`memekit.search.metrics.sample_metrics`), sampling seeds 0-2. Every model
gets the same seeds, so differences are paired (the table also gives the unpaired SE, to show what
pairing bought). The best length is chosen on seeds 0-2 and compared with the fixed decay on fresh
seeds 3-5 (``--confirm-seeds``), so the choice does not inflate its own gain. The SEs are over
sampling seeds of one training run: they say which EMA length suits this run, not how much a
length gains across training seeds.

Every stage resumes: training from its checkpoints (``--max-minutes`` chunks exit 0), the
reconstructions are cheap and rewritten, and each (model, seed) score is stored in the results file
as soon as it is measured.

    python benchmarks/posthoc_ema.py                          # train, reconstruct, score; rerun to resume
    python benchmarks/posthoc_ema.py --max-minutes 170        # at most 170 minutes of training this call
    python benchmarks/posthoc_ema.py --report                 # the table (and the curve, .png) from the results file
    python benchmarks/posthoc_ema.py --smoke --out /tmp/phema # builtin:shapes, 16 px, a few minutes

About 45 min of training at ~40 img/s and ~5.6 img/s of sampling, so ~3 min per (model, seed):
(1 + 7 lengths) x 3 seeds + 2 x 3 confirmation seeds = 30 scores, ~1.5 h (2-core CPU, one thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memekit.analysis.inception import data_source
from memekit.analysis.stats import mean_se, paired, t_cutoff, welch
from memekit.search.checkpoint import latest_checkpoint
from memekit.search.ema import fixed_decay_sigma_rel, posthoc_sweep, sigma_dir, sigma_rel_to_gamma
from memekit.search.metrics import sample_metrics
from memekit.search.train import TrainConfig, TrainingPaused, train, with_preconditioning
from memekit.space import ExpertSpec
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_json
from memekit.space.presets import backbone_presets

REPO = Path(__file__).resolve().parents[1]
UTK = REPO.parent / "shared" / "data" / "utkface" / "crop_part1"
CPU32 = ExpertSpec(resolution=32, base_width=16, channel_mult=(1, 2, 2), blocks_per_stage=(1, 1, 1),
                   attention_share=(0.0, 1.0, 1.0), head_dim=4, attention_pool=(2, 1, 1))  # evidence.py's
FIXED = "fixed-decay"
SIGMA_RELS = (0.03, 0.05, 0.07, 0.10, 0.14, 0.20, 0.25)
SMOKE_SIGMA_RELS = (0.03, 0.05)


@dataclass(frozen=True)
class Protocol:
    """What the run is trained and scored with; stored in the results file, which refuses another."""

    data: str
    images: int = 100_000
    batch: int = 32
    lr: float = 1e-3
    warmup_images: int = 1000
    seed: int = 0
    posthoc_ema_every: int = 50  # steps
    n: int = 1000  # samples per sampling seed
    steps: int = 25  # DDIM steps
    seeds: int = 3  # sampling seeds of the sweep
    confirm_seeds: int = 3  # fresh sampling seeds of best vs fixed decay
    resolution: int = 32

    def train_config(self, device: str | None) -> TrainConfig:
        steps = self.images // self.batch
        return TrainConfig(data=self.data, images=self.images, batch=self.batch, lr=self.lr,
                           warmup_images=self.warmup_images, seed=self.seed, val_images=256, val_every=0,
                           sample_every=0, sample_count=16, sample_steps=self.steps,
                           checkpoint_every=max(1, steps // 20), keep_last=1, device=device,
                           posthoc_ema_every=self.posthoc_ema_every)


def smoke_protocol(data: str) -> Protocol:
    return Protocol(data=data, images=64 * 32, posthoc_ema_every=8, n=24, steps=4, seeds=2, confirm_seeds=2,
                    resolution=16)


# ---- stages ---------------------------------------------------------------------------------------
def train_stage(protocol: Protocol, run_dir: Path, device: str | None, max_minutes: float | None) -> bool:
    """Train (or resume) the run; False when a --max-minutes chunk paused it."""
    backbone = dataclasses.replace(CPU32, resolution=protocol.resolution)
    spec = with_preconditioning(backbone_presets(backbone)["meme-paper"], "wiener", protocol.data)
    deadline = time.time() + 60 * max_minutes if max_minutes is not None else None
    try:
        train(spec, protocol.train_config(device), run_dir, progress=False, deadline=deadline, say=_say)
    except TrainingPaused as paused:
        _say(f"paused: {paused}")
        return False
    return True


def score(results: dict[str, Any], path: Path, protocol: Protocol, model: str, folder: Path, seed: int,
          device: str | None) -> dict[str, Any]:
    """KID / FID / LSD of ``folder`` at sampling seed ``seed``, measured once and stored at once."""
    stored = results["scores"].setdefault(model, {})
    if str(seed) not in stored:
        start = time.perf_counter()
        m = sample_metrics(folder, data_source(protocol.data), protocol.n, steps=protocol.steps, seeds=1,
                           first_seed=seed, device=device)
        stored[str(seed)] = {**m.per_seed[0], "n_ref": m.n_ref, "weights": m.weights_label,
                             "checkpoint": m.checkpoint, "seconds": time.perf_counter() - start}
        atomic_write_json(path, results)
        _say(f"{model}, sampling seed {seed}: KID {stored[str(seed)]['kid_mean']:.5f}")
    return stored[str(seed)]


def folders(run_dir: Path, sigma_rels: tuple[float, ...]) -> dict[str, Path]:
    """The models scored: the run's fixed-decay EMA (its final checkpoint) and every reconstruction."""
    out = {FIXED: latest_checkpoint(run_dir)}
    out.update({f"sigma-{s:.3f}": sigma_dir(run_dir / "ema", s) for s in sigma_rels})
    return out


def kids(results: dict[str, Any], model: str, seeds: range) -> list[float]:
    stored = results["scores"].get(model, {})
    return [stored[str(s)]["kid_mean"] for s in seeds if str(s) in stored]


def best_length(results: dict[str, Any], sigma_rels: tuple[float, ...], seeds: range) -> str:
    """The reconstruction with the lowest mean KID over the sweep's seeds."""
    return min((f"sigma-{s:.3f}" for s in sigma_rels), key=lambda m: sum(kids(results, m, seeds)))


# ---- the table -------------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    protocol, run_dir = results["protocol"], Path(results["run"])
    sweep, confirm = range(protocol["seeds"]), range(protocol["seeds"], protocol["seeds"] + protocol["confirm_seeds"])
    fixed = kids(results, FIXED, sweep)
    lines = [f"Post-hoc EMA, {results['data_label']}: KID of {protocol['n']} DDIM-{protocol['steps']} samples per "
             f"sampling seed (vs the reference split), seeds {sweep.start}-{sweep.stop - 1}; one training run "
             f"(seed {protocol['seed']}, {protocol['images']:,} images); SEs over sampling seeds only.",
             "", "| EMA | sigma_rel | gamma | profile L2 error | KID mean +- SE | KID - fixed (paired SE) "
                 "| unpaired SE | > 2 SE |",
             "|---|---|---|---|---|---|---|---|"]
    fixed_rel = results.get("fixed_sigma_rel")
    for model in [FIXED, *sorted(m for m in results["scores"] if m != FIXED)]:
        values = kids(results, model, sweep)
        if len(values) < 2:
            continue
        est = mean_se(values)
        rel = fixed_rel if model == FIXED else float(model.split("-")[1])
        gamma = "" if model == FIXED else f"{sigma_rel_to_gamma(rel):.2f}"
        fit = results.get("fit_error", {}).get(model)
        fit = "" if fit is None else f"{100 * fit:.2f} %"
        diff = "" if model == FIXED or len(values) != len(fixed) else _diff_cells(values, fixed)
        lines.append(f"| {'fixed decay ' + str(results['ema_decay']) if model == FIXED else 'post-hoc'} | "
                     f"{rel if rel is None else f'{rel:.3f}'} | {gamma} | {fit} | {est.mean:.5f} +- {est.se:.5f} | "
                     f"{diff or ' | | '} |")
    best = results.get("best")
    if best is not None:
        a, b = kids(results, best, confirm), kids(results, FIXED, confirm)
        if len(a) == len(b) >= 2:
            d = paired(a, b)
            verdict = "beyond" if abs(d.diff) > 2 * d.se else "within"
            lines += ["", f"Best length on seeds {sweep.start}-{sweep.stop - 1}: {best}. On fresh seeds "
                          f"{confirm.start}-{confirm.stop - 1}: KID {mean_se(a).mean:.5f} vs fixed decay "
                          f"{mean_se(b).mean:.5f}, difference {d.diff:+.5f} +- {d.se:.5f} (paired SE): {verdict} two "
                          f"standard errors; t test p = {d.p:.3f} ({d.dof:g} dof: the 5 % two-sided cutoff is "
                          f"{t_cutoff(d.dof):.2f} SE)."]
    if fixed_rel is not None:
        lines.append(f"\nRun: {run_dir}; the fixed-decay EMA's own sigma_rel is {fixed_rel:.3f} "
                     "(memekit.search.ema.fixed_decay_sigma_rel).")
    return "\n".join(lines)


def plot(results: dict[str, Any], png: Path) -> Path | None:
    """The curve: KID mean +- SE over the sweep's sampling seeds against sigma_rel (log axis), the
    fixed-decay EMA as a point at its own sigma_rel; None until two lengths have two seeds each."""
    protocol = results["protocol"]
    sweep = range(protocol["seeds"])
    points = [(float(m.split("-")[1]), mean_se(kids(results, m, sweep))) for m in sorted(results["scores"])
              if m != FIXED and len(kids(results, m, sweep)) >= 2]
    if len(points) < 2:
        return None
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.9), dpi=100)
    rels = [r for r, _ in points]
    ax.errorbar(rels, [e.mean for _, e in points], yerr=[e.se for _, e in points], marker="o", capsize=3,
                label="post-hoc EMA (reconstructed)")
    fixed = kids(results, FIXED, sweep)
    if len(fixed) >= 2 and results.get("fixed_sigma_rel") is not None:
        est = mean_se(fixed)
        ax.errorbar([results["fixed_sigma_rel"]], [est.mean], yerr=[est.se], marker="s", color="C3", capsize=3,
                    linestyle="none", label=f"fixed decay {results['ema_decay']} (training's EMA, sigma_rel "
                                            f"{results['fixed_sigma_rel']:.3f})")
    ax.set_xscale("log")
    ax.set_xticks(rels, [f"{t:.3g}" for t in rels])  # the fixed EMA's sigma_rel is in its legend entry
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("EMA length sigma_rel")
    ax.set_ylabel(f"KID (n = {protocol['n']}, DDIM-{protocol['steps']})")
    ax.set_title(f"Post-hoc EMA: KID against EMA length\n{results['data_label']}, "
                 f"{protocol['images']:,} images, +- SE over {len(sweep)} sampling seeds\n(the same seeds for "
                 "every point: paired differences are far tighter, see the table)", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def _diff_cells(values: list[float], fixed: list[float]) -> str:
    d, unpaired = paired(values, fixed), welch(values, fixed)
    return f"{d.diff:+.5f} +- {d.se:.5f} | {unpaired.se:.5f} | {'yes' if abs(d.diff) > 2 * d.se else 'no'}"


# ---- driver ----------------------------------------------------------------------------------------
def load_results(path: Path, protocol: Protocol, run_dir: Path, label: str) -> dict[str, Any]:
    fresh = {"protocol": dataclasses.asdict(protocol), "run": str(run_dir), "data_label": label, "scores": {}}
    if not path.is_file():
        return fresh
    results = json.loads(path.read_text())
    if results["protocol"] != fresh["protocol"]:
        raise MemekitError(f"{path} holds results of another protocol: use another --results file")
    return results


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(UTK), help="training data (default: UTKFace crop_part1 in shared/data)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "posthoc-ema-utk32", help="the run folder")
    p.add_argument("--results", type=Path, default=None,
                   help="results JSON (default: benchmarks/posthoc_ema_utk32.json; OUT/results.json with --smoke)")
    p.add_argument("--sigma-rels", type=float, nargs="+", default=None,
                   help=f"EMA lengths scored (default: {' '.join(map(str, SIGMA_RELS))}; --smoke: 0.03 0.05)")
    p.add_argument("--max-minutes", type=float, default=None, help="at most this much training per call")
    p.add_argument("--device", default=None)
    p.add_argument("--report", action="store_true", help="print the table from the results file and exit")
    p.add_argument("--smoke", action="store_true", help="builtin:shapes:512 at 16 px, 2,048 images, n 24, DDIM-4")
    args = p.parse_args(argv)
    protocol = smoke_protocol("builtin:shapes:512") if args.smoke else Protocol(data=args.data)
    label = "builtin:shapes smoke test" if args.smoke else "UTKFace 32 px (crop_part1)"
    path = args.results or (args.out / "results.json" if args.smoke else REPO / "benchmarks" / "posthoc_ema_utk32.json")
    sigma_rels = tuple(sorted(set(args.sigma_rels or (SMOKE_SIGMA_RELS if args.smoke else SIGMA_RELS))))
    try:
        results = load_results(path, protocol, args.out, label)
        png = path.with_suffix(".png")
        if args.report:
            print(report(results))
            plot(results, png)
            return 0
        if not train_stage(protocol, args.out, args.device, args.max_minutes):
            return 0
        config = protocol.train_config(args.device)
        updates = config.steps  # one EMA update per step
        results.update(ema_decay=config.ema_decay, fixed_sigma_rel=fixed_decay_sigma_rel(config.ema_decay, updates))
        sweep = posthoc_sweep(args.out, sigma_rels, args.out / "ema", quality="none")  # reconstructions only
        results.setdefault("fit_error", {}).update({f"sigma-{k}": v["fit_error"] for k, v in sweep.scores.items()})
        models = folders(args.out, sigma_rels)
        for model, folder in models.items():
            for seed in range(protocol.seeds):
                score(results, path, protocol, model, folder, seed, args.device)
        results["best"] = best_length(results, sigma_rels, range(protocol.seeds))
        atomic_write_json(path, results)
        for model in (results["best"], FIXED):
            for seed in range(protocol.seeds, protocol.seeds + protocol.confirm_seeds):
                score(results, path, protocol, model, models[model], seed, args.device)
    except MemekitError as err:
        print(f"posthoc_ema: error: {err}", file=sys.stderr)
        return 2
    print(report(results))
    plot(results, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
