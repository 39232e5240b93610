"""Evidence profile: MEME's table on one backbone, as a thin profile over ``memekit compare`` / ``ablate``.

The rows (the presets rebuilt on the profile's backbone, the spectral prior on it, the first specs of a
study export, the best trial of a random-sampler study, the hybrids of the attribution), the claims
with the margins declared in ``benchmarks/RESULTS.md`` before their runs, and the ablation's design
are defined here; training, scoring, statistics and verdicts are :mod:`memekit.search.compare` and
:mod:`memekit.search.ablate`. Results: ``benchmarks/evidence_PROFILE.json`` (figures and reports in
``benchmarks/evidence_PROFILE/``); run folders (weights) in ``runs/compare-PROFILE``, never committed.

    python benchmarks/evidence.py --profile cpu32 --rows meme-paper --train-seeds 3 --max-minutes 170
    python benchmarks/evidence.py --profile cpu32 --rows hybrid-shares-trial9 hybrid-allocation-trial9 --train-seeds 3
    python benchmarks/evidence.py --profile cpu32 --timing 10      # sampling / training img/s, every row, one run
    python benchmarks/evidence.py --profile cpu32 --floor          # n training images against the reference
    python benchmarks/evidence.py --profile cpu32 --report         # table, verdicts, ablation, figures
    python benchmarks/evidence.py --profile cpu32 --calibrate --budgets 25000,50000,100000,150000

Two processes started with the same rows split the runs (each claims the run it trains).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from memekit.search import ablate
from memekit.search import compare as cmp
from memekit.space import ExpertSpec, MemeSpec, load_spec
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_text
from memekit.space.presets import backbone_presets

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
BASELINES = ("single-large", "single-small", "multi-same", "meme-paper")
CPU32 = ExpertSpec(resolution=32, base_width=16, channel_mult=(1, 2, 2), blocks_per_stage=(1, 1, 1),
                   attention_share=(0.0, 1.0, 1.0), head_dim=4, attention_pool=(2, 1, 1))
MARGIN = 0.005  # KID: about 10 % of single-large's 0.0467 on UTKFace; declared 2026-12-07 before the runs it decides


@dataclass(frozen=True)
class Profile:
    """One data set's table: protocol, the study exports its searched and random rows come from (the
    first trials of each export, best proxy quality first, named by ``searched``), the claims (one Holm
    family, declared before their runs) and the attribution (winner, baseline, groups, hybrid names)."""

    backbone: ExpertSpec
    protocol: cmp.Protocol
    export: Path
    random_export: Path
    searched: tuple[str, ...]
    claims: tuple[cmp.Claim, ...]
    ablation: tuple
    declared: str  # the date the claims were declared (RESULTS.md)


def claims(searched: tuple[str, ...], a_row: str) -> tuple[cmp.Claim, ...]:
    """The claims of a table (RESULTS.md, "Margins declared before the runs"); ``a_row`` is claim (a)'s row."""
    pairs = [cmp.Claim("noninferior", a_row, "single-large", MARGIN,
                       "(a) a 4-expert model is no worse than single-large"),
             cmp.Claim("noninferior", "meme-paper", "multi-same", MARGIN,
                       "(b) per-interval architectures no worse than one"),
             cmp.Claim("better", searched[0], "meme-paper", None,
                       "(c) the search's pick beats the hand-set configuration")]
    if len(searched) > 1:
        pairs.append(cmp.Claim("better", searched[1], "meme-paper", None, "(c) the search's second pick beats it"))
    pairs.append(cmp.Claim("better", "spectral-prior", "meme-paper", None,
                           "the spectral prior beats the hand-set configuration"))
    pairs += [cmp.Claim("better", name, "random-best", None, f"the search's {rank} beats random search's")
              for name, rank in zip(searched[:2], ("pick", "second pick"), strict=False)]
    return tuple(pairs)


UTK = ("searched-utk32bw-trial-00009", "searched-utk32bw-trial-00008", "searched-utk32bw-trial-00013")
CIFAR = ("searched-best",)
PROFILES = {
    "cpu32": Profile(CPU32, cmp.Protocol(str(DATA / "utkface" / "crop_part1"), 100_000, 32, 1e-3, 1000, 1000, 25,
                                         "wiener"),
                     REPO / "benchmarks" / "utk32bw_study", REPO / "benchmarks" / "utk32bwr_study", UTK,
                     claims(UTK[:2], UTK[1]),
                     (UTK[0], "meme-paper", (("shares",), ("intervals", "p_n")),
                      {(1, 0): "hybrid-shares-trial9", (0, 1): "hybrid-allocation-trial9"}), "2026-12-07"),
    "cifar32": Profile(CPU32, cmp.Protocol(str(DATA / "cifar10" / "test"), 100_000, 32, 1e-3, 1000, 1000, 25,
                                           "wiener"),
                       REPO / "benchmarks" / "cifar32_study", REPO / "benchmarks" / "cifar32r_study", CIFAR,
                       claims(CIFAR, CIFAR[0]),
                       (CIFAR[0], "meme-paper", (("shares",), ("intervals", "p_n")),
                        {(1, 0): "hybrid-shares", (0, 1): "hybrid-allocation"}), "2026-12-07"),
}


def profile_rows(name: str) -> dict[str, MemeSpec]:
    """Every row of the profile, before the protocol's preconditioning is measured into it (the searched,
    random and hybrid rows once their study exports exist)."""
    from memekit.analysis.data import load_images
    from memekit.analysis.linear import STATS_IMAGES
    from memekit.analysis.priors import prior_spec

    profile = PROFILES[name]
    presets = backbone_presets(profile.backbone)
    rows = {row: presets[row] for row in BASELINES}
    images = load_images(profile.protocol.data, profile.backbone.resolution, split="train", limit=STATS_IMAGES,
                         progress=False)
    rows["spectral-prior"] = prior_spec(images, 4, presets["meme-paper"])
    for export, names in ((profile.export, profile.searched), (profile.random_export, ("random-best",))):
        if (export / "export.json").is_file():  # export.json lists the trials best proxy quality first
            for entry, row in zip(json.loads((export / "export.json").read_text())["trials"], names, strict=False):
                rows[row] = load_spec(export / entry["file"])
    winner, baseline, groups, names = profile.ablation
    if winner in rows:
        prepared = cmp.prepared_rows({k: rows[k] for k in (winner, baseline)}, profile.protocol)
        for cell, spec in ablate.hybrid_cells(prepared[winner], prepared[baseline], groups).items():
            if cell in names:
                rows[names[cell]] = spec
    return rows


def comparison(name: str, rows: dict[str, MemeSpec]) -> cmp.Comparison:
    profile = PROFILES[name]
    path = REPO / "benchmarks" / f"evidence_{name}.json"
    opened = cmp.open_comparison(path, profile.protocol, cmp.prepared_rows(rows, profile.protocol),
                                 REPO / "runs" / f"compare-{name}")
    cmp.declare_claims(opened.results, profile.claims, profile.declared)  # the whole family, scored or not
    winner, baseline, groups, names = profile.ablation
    ablate.record(opened.results, f"{winner} vs {baseline}", {(1, 1): winner, (0, 0): baseline, **names}, groups)
    return opened


def report(c: cmp.Comparison) -> str:
    """The table and verdicts, the attribution, the speeds and the floor, as markdown (also written to
    ``evidence_PROFILE/report.md`` with the quality-cost figure)."""
    from memekit.analysis.plots import plot_quality_cost

    r = c.results
    parts = ["## Table and claims", cmp.report(r, cmp.stored_claims(r))]
    for label, (cells, groups) in ablate.stored(r).items():
        parts += [f"## Attribution: {label}", ablate.report(r, cells, groups, margin=MARGIN)]
    if r.get("timing"):
        lines = [f"- {name}: sampling {cmp.speed_ratio(r['timing'], name, 'single-large').mean:.2f}x "
                 f"+- {cmp.speed_ratio(r['timing'], name, 'single-large').se:.2f} single-large's img/s "
                 f"({len(t['sampling_rounds'])} rounds)" for name, t in r["timing"].items() if name != "single-large"]
        parts += ["## Sampling speed against single-large (mean +- SE of per-round ratios)", "\n".join(lines)]
    if r.get("floor"):
        f = r["floor"]
        parts += ["## Floor", f"{f['n']} training images against {f['n_ref']} reference images: FID {f['fid']:.1f}, "
                              f"KID {f['kid_mean']:.4f}, LSD {f['lsd']:.2f} dB"]
    text = "\n\n".join(parts)
    figures = cmp.figures_dir(c)
    figures.mkdir(parents=True, exist_ok=True)
    atomic_write_text(figures / "report.md", text + "\n")
    real = figures / "grid-real.png"  # what the sample grids are read against
    if not real.exists():
        cmp.draw_real_grid(c.protocol.data, next(iter(c.rows.values())).experts[0].resolution, real)
    frame = cmp.quality_cost_frame(r)
    if len(frame):
        plot_quality_cost(frame).savefig(figures / "pareto.png", dpi=110)
    return text


def calibrate(c: cmp.Comparison, spec: MemeSpec, budgets: list[int], deadline: float | None) -> None:
    """``single-small`` trained through ``budgets`` (one run, extended), scored at each with one sampling seed."""
    from memekit.search.train import TrainingPaused

    folder = c.work / "calibration-single-small"
    for budget in sorted(budgets):
        if str(budget) in c.results.setdefault("calibration", {}):
            continue
        config = dataclasses.replace(c.protocol.train_config(0, None), images=budget)
        try:
            trained = cmp.train_run(spec, config, folder, deadline, print, True)
        except TrainingPaused as paused:
            print(f"calibration at {budget:,} images: {paused}")
            return
        scored = cmp.score_run(folder, c.protocol, 0, None, None)
        grid = cmp.draw_grid(folder, cmp.figures_dir(c) / f"grid-calibration-{budget}.png", c.protocol.steps, None)
        c.results["calibration"][str(budget)] = {**trained, **scored, "grid": grid}
        c.save()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu32")
    p.add_argument("--rows", nargs="*", default=None, help="only these rows (default: every row)")
    p.add_argument("--train-seeds", type=int, default=1, help="training seeds of each row asked for")
    p.add_argument("--sampling-seeds", type=int, default=1, help="sampling seeds of each run")
    p.add_argument("--timing", type=int, default=0, metavar="ROUNDS", help="time every row side by side")
    p.add_argument("--floor", action="store_true", help="score n training images against the reference split")
    p.add_argument("--calibrate", action="store_true", help="single-small along --budgets instead of the table")
    p.add_argument("--budgets", default="25000,50000,100000,150000")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--report", action="store_true", help="print the table, verdicts and attribution")
    args = p.parse_args(argv)
    try:
        rows = profile_rows(args.profile)
        unknown = set(args.rows or []) - set(rows)
        if unknown:
            raise MemekitError(f"unknown rows {sorted(unknown)}: choose from {', '.join(rows)}")
        c = comparison(args.profile, rows)
        c.save()
        deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
        chosen = {n: c.rows[n] for n in (args.rows or rows)}
        if args.calibrate:
            calibrate(c, c.rows["single-small"], [int(b) for b in args.budgets.split(",")], deadline)
        elif args.timing:
            c.results["timing"] = cmp.speed_rounds(c.rows, c.protocol, args.timing)
            c.save()
        elif args.floor:
            c.results["floor"] = cmp.floor_metrics(c.protocol, PROFILES[args.profile].backbone.resolution)
            c.save()
        elif not args.report:
            c.rows = chosen
            if not cmp.run_comparison(c, args.train_seeds, args.sampling_seeds, deadline=deadline):
                print("not finished: rerun the same command to go on")
            c.results = cmp.load_results(c.path)
        print(report(c))
        return 0
    except MemekitError as err:
        print(f"evidence: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
