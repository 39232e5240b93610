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
from pathlib import Path

from memekit.search import ablate
from memekit.search import compare as cmp
from memekit.space import ExpertSpec, MemeSpec, load_spec
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_text
from memekit.space.presets import backbone_presets

REPO = Path(__file__).resolve().parents[1]
UTKFACE = REPO.parent / "shared" / "data" / "utkface" / "crop_part1"
BASELINES = ("single-large", "single-small", "multi-same", "meme-paper")
CPU32 = ExpertSpec(resolution=32, base_width=16, channel_mult=(1, 2, 2), blocks_per_stage=(1, 1, 1),
                   attention_share=(0.0, 1.0, 1.0), head_dim=4, attention_pool=(2, 1, 1))
PROFILES = {"cpu32": (CPU32, cmp.Protocol(str(UTKFACE), 100_000, 32, 1e-3, 1000, 1000, 25, "wiener"))}
EXPORT, RANDOM_EXPORT = REPO / "benchmarks" / "utk32bw_study", REPO / "benchmarks" / "utk32bwr_study"
SEARCHED = ("searched-utk32bw-trial-00009", "searched-utk32bw-trial-00008", "searched-utk32bw-trial-00013")
MARGIN = 0.005  # KID: about 10 % of single-large's 0.0467; declared 2026-12-07 before the runs it decides
# the claims, one Holm family, declared before their runs (RESULTS.md, "Margins declared before the runs")
CLAIMS = (
    cmp.Claim("noninferior", SEARCHED[1], "single-large", MARGIN, "(a) a 4-expert model is no worse than single-large"),
    cmp.Claim("noninferior", "meme-paper", "multi-same", MARGIN, "(b) per-interval architectures no worse than one"),
    cmp.Claim("better", SEARCHED[0], "meme-paper", None, "(c) the search's pick beats the hand-set configuration"),
    cmp.Claim("better", SEARCHED[1], "meme-paper", None, "(c) the search's second pick beats it"),
    cmp.Claim("better", "spectral-prior", "meme-paper", None, "the spectral prior beats the hand-set configuration"),
    cmp.Claim("better", SEARCHED[0], "random-best", None, "the search's pick beats random search's"),
    cmp.Claim("better", SEARCHED[1], "random-best", None, "the search's second pick beats random search's"),
)
# the attribution: trial 9 against meme-paper, {attention shares} x {intervals and p_n}
ABLATION = (SEARCHED[0], "meme-paper", (("shares",), ("intervals", "p_n")),
            {(1, 0): "hybrid-shares-trial9", (0, 1): "hybrid-allocation-trial9"})


def profile_rows(profile: str) -> dict[str, MemeSpec]:
    """Every row of the profile, before the protocol's preconditioning is measured into it."""
    from memekit.analysis.data import load_images
    from memekit.analysis.linear import STATS_IMAGES
    from memekit.analysis.priors import prior_spec

    backbone, protocol = PROFILES[profile]
    presets = backbone_presets(backbone)
    rows = {name: presets[name] for name in BASELINES}
    images = load_images(protocol.data, backbone.resolution, split="train", limit=STATS_IMAGES, progress=False)
    rows["spectral-prior"] = prior_spec(images, 4, presets["meme-paper"])
    manifest = json.loads((EXPORT / "export.json").read_text())
    for entry, name in zip(manifest["trials"], SEARCHED, strict=False):
        rows[name] = load_spec(EXPORT / entry["file"])
    random = RANDOM_EXPORT / "export.json"
    if random.is_file():  # the best trial (by proxy quality) of the random-sampler study
        rows["random-best"] = load_spec(RANDOM_EXPORT / json.loads(random.read_text())["trials"][0]["file"])
    winner, baseline, groups, names = ABLATION
    prepared = cmp.prepared_rows({k: rows[k] for k in (winner, baseline)}, protocol)
    for cell, spec in ablate.hybrid_cells(prepared[winner], prepared[baseline], groups).items():
        if cell in names:
            rows[names[cell]] = spec
    return rows


def comparison(profile: str, rows: dict[str, MemeSpec]) -> cmp.Comparison:
    _, protocol = PROFILES[profile]
    path = REPO / "benchmarks" / f"evidence_{profile}.json"
    opened = cmp.open_comparison(path, protocol, cmp.prepared_rows(rows, protocol), REPO / "runs" / f"compare-{profile}")
    cmp.declare_claims(opened.results, CLAIMS, "2026-12-07")  # the whole family, scored or not
    winner, baseline, groups, names = ABLATION
    cells = {(1, 1): winner, (0, 0): baseline, **names}
    ablate.record(opened.results, f"{winner} vs {baseline}", cells, groups)
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
            calibrate(c, chosen.get("single-small", c.rows["single-small"]), [int(b) for b in args.budgets.split(",")],
                      deadline)
        elif args.timing:
            c.results["timing"] = cmp.speed_rounds(c.rows, c.protocol, args.timing)
            c.save()
        elif args.floor:
            c.results["floor"] = cmp.floor_metrics(c.protocol, PROFILES[args.profile][0].resolution)
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
