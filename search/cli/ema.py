"""``memekit ema RUN_DIR --sigma-rel ...``: post-hoc EMA, a thin command over
:func:`memekit.search.ema.posthoc_sweep`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from memekit.search.ema_profiles import QUALITIES

from .args import positive_float, positive_int

if TYPE_CHECKING:
    from memekit.search.ema import SweepResult

METRICS = {"val": "val_loss", "kid": "kid_mean", "none": None}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _ema(args: argparse.Namespace) -> int:
    from memekit.analysis.inception import data_source
    from memekit.search.ema import (
        kid_scorer,
        posthoc_sweep,
        snapshot_metadata,
        snapshots_until,
        sweep_plan,
        validation_scorer,
    )

    plan = sweep_plan(args.run_dir, args.sigma_rel, args.out, args.step)  # checked before any work
    if args.dry_run:
        print(json.dumps(plan, indent=2))
        return 0
    scorer = None
    if args.quality == "val":
        scorer = validation_scorer(args.run_dir, args.device, args.step, say=_say)
    elif args.quality == "kid":
        reference = args.reference
        if reference is None:  # the run's own data, read by memekit's loader (its reference split)
            config = json.loads(snapshot_metadata(snapshots_until(args.run_dir, args.step)[-1].path)["config"])
            reference = data_source(config["data"])
        scorer = kid_scorer(reference, args.n, args.sampling_steps, args.seeds, args.device, progress=not args.quiet)
    result = posthoc_sweep(args.run_dir, args.sigma_rel, args.out, args.step, args.quality, scorer,
                           METRICS[args.quality], say=None if args.quiet else _say)
    print("\n".join(result_lines(result)))
    return 0


def result_lines(result: SweepResult) -> list[str]:
    """The sweep as a small table, the best length, and how to use it."""
    lines = [f"post-hoc EMA of {result.run_dir} at step {result.step:,} ({result.images_seen:,} images) from "
             f"{result.snapshots} snapshots -> {result.out}"]
    metric = result.metric
    for key, entry in result.scores.items():
        score = f"  {metric} {entry[metric]:.5f}" if metric else ""
        if metric == "kid_mean":
            score += f" +- {entry['kid_std']:.5f} (sd over {entry['seeds']} seeds)"
        lines.append(f"  sigma_rel {key} (gamma {entry['gamma']:6.2f}){score}  {entry['folder']}")
    if result.baseline is not None and metric:
        where = f", sigma_rel about {result.baseline['sigma_rel']:.3f}" if "sigma_rel" in result.baseline else ""
        lines.append(f"  fixed-decay EMA (ema_decay {result.baseline['ema_decay']}{where})  {metric} "
                     f"{result.baseline[metric]:.5f}  {result.baseline['checkpoint']}")
    if result.best_dir is not None:
        lines.append(f"best: sigma_rel {result.best_sigma_rel:.3f} -> {result.best_dir} (memekit sample "
                     f"{result.best_dir} --out DIR; memekit fid {result.best_dir} REFERENCE --n N)")
    return lines


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ema", help="post-hoc EMA: reconstruct a run's weights for any EMA length and keep the best",
        description="Reconstruct the weights of power-function EMA profiles of any length (sigma_rel: the "
                    "profile's std relative to the training time) from the snapshots of a run trained with "
                    "--posthoc-ema-every or --ema-snapshots, by EDM2's least-squares solve (Karras et al. 2024). "
                    "Each length is written as a run folder OUT/sigma-S (one checkpoint whose weights and EMA are "
                    "the reconstruction), scored with --quality, and the best is copied to OUT/best, which "
                    "'memekit sample', 'memekit fid' and 'memekit package' read like any run. Scores: OUT/ema.json.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of memekit train with ema_snapshots/")
    p.add_argument("--sigma-rel", type=positive_float, nargs="+", required=True, metavar="S",
                   help="EMA lengths to reconstruct, each in (0, 0.289), e.g. 0.03 0.05 0.08 0.12")
    p.add_argument("--out", default=None, metavar="OUT", help="where the reconstructions go (default: RUN_DIR/ema)")
    p.add_argument("--step", type=positive_int, default=None,
                   help="reconstruct at this snapshot step (default: the newest snapshot's)")
    p.add_argument("--quality", choices=QUALITIES, default="val",
                   help="score each length by the run's validation loss (val), by KID of sampled images (kid, "
                        "offline Inception), or not at all (none: no best)")
    p.add_argument("--reference", default=None, metavar="SOURCE",
                   help="--quality kid: the reference set, as memekit fid takes it (default: the run's data, "
                        "its reference "
                        "split)")
    p.add_argument("--n", type=positive_int, default=1000, help="--quality kid: samples per seed")
    p.add_argument("--sampling-steps", type=positive_int, default=25, help="--quality kid: DDIM steps")
    p.add_argument("--seeds", type=positive_int, default=3, help="--quality kid: sampling seeds")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dry-run", action="store_true", help="print the snapshots and lengths as JSON, write nothing")
    p.add_argument("--quiet", action="store_true", help="no per-length status lines")
    p.set_defaults(run=_ema)
