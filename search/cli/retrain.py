"""``memekit fidelity`` (proxy rank agreement with longer runs) and ``memekit rerank`` (the
front-runners over several seeds): retraining a study's trials."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from memekit.search.retrain_target import TARGETS, Target

from .args import nonneg_int, positive_int, with_default


def _fidelity(args: argparse.Namespace) -> int:
    from memekit.analysis.fid import reference_source
    from memekit.search.fidelity import (
        fidelity_runs,
        fidelity_text,
        plan_fidelity,
        result_record_name,
        save_fidelity,
    )
    from memekit.search.results import load_study

    loaded = load_study(args.study_dir)
    select, k = ("spread", args.spread) if args.spread is not None else ("top", args.top)
    target = Target(args.target, args.target_n, args.target_steps, reference_source(loaded.config.data))
    if args.dry_run:
        plan = plan_fidelity(loaded, k, args.images, args.out, args.device, select)
        print(json.dumps({"study_name": loaded.study.study_name, **plan.to_dict(),
                          "target": dataclasses.asdict(target)}, indent=2))
        return 0

    def on_run(number: int, result) -> None:
        print(f"trial {number}: {result.images_seen:,} images, val_loss {result.val['val_loss']:.5f} "
              f"({result.run_dir})", file=sys.stderr)

    result = fidelity_runs(loaded, k, args.images, args.out, device=args.device,
                           progress=not args.quiet and args.jobs == 1, on_run=on_run, select=select, jobs=args.jobs,
                           noise_seeds=args.noise_seeds, target=target)
    written = save_fidelity(loaded, result, args.export)
    print(fidelity_text(result))
    print(f"saved to the study (user attr {result_record_name(result)!r}) and {', '.join(str(p) for p in written)}")
    return 0


def _rerank(args: argparse.Namespace) -> int:
    from memekit.search.rerank import plan_rerank, rerank, rerank_text, save_rerank
    from memekit.search.results import load_study

    loaded = load_study(args.study_dir)
    if args.dry_run:
        plan = plan_rerank(loaded, args.top, args.seeds, args.images, args.out, args.device)
        print(json.dumps({"study_name": loaded.study.study_name, **plan.to_dict()}, indent=2))
        return 0

    def on_run(number: int, result) -> None:
        print(f"trial {number}: seed {result.run_dir.name.rsplit('-', 1)[-1]}, val_loss {result.val['val_loss']:.5f}",
              file=sys.stderr)

    result = rerank(loaded, args.top, args.seeds, args.images, args.out, args.device, args.jobs, on_run)
    written = save_rerank(loaded, result, args.export)
    print(rerank_text(result))
    print(f"saved to the study (user attr 'rerank') and {', '.join(str(p) for p in written)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fidelity", help="retrain K trials longer; Kendall tau / Spearman rho with the proxy",
                              description="Does the proxy rank trials as longer training does? Retrain K of a "
                                          "study's feasible trials with --images, score the long runs by --target "
                                          "and report Kendall tau and Spearman rho against every proxy objective "
                                          "the study recorded; saved in the study and in the export's report.md.")
    _retraining_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--top", type=int, default=5, help="the K best feasible trials by proxy quality (K >= 3)")
    which.add_argument("--spread", type=int, default=None, metavar="K",
                       help=with_default("K feasible trials at evenly spaced proxy ranks, best and worst "
                                         "included (K >= 3)", "--top"))
    p.add_argument("--images", type=positive_int, required=True, help="long training budget (images, > proxy)")
    p.add_argument("--noise-seeds", type=nonneg_int, default=0, metavar="S",
                   help="also train the best chosen trial with S more seeds at both budgets: the seed noise of "
                        "each score beside the spread between trials")
    p.add_argument("--target", choices=TARGETS, default="val",
                   help="what scores the long runs: val (validation loss), kid or fid (of --target-n samples "
                        "against the data's reference split); every proxy objective the study recorded is "
                        "compared with it")
    p.add_argument("--target-n", type=positive_int, default=1000, help="samples per long run for kid/fid")
    p.add_argument("--target-steps", type=positive_int, default=25, help="DDIM steps of those samples")
    p.add_argument("--out", default=None, help=with_default("folder of the runs", "STUDY_DIR/fidelity"))
    p.add_argument("--dry-run", action="store_true", help="print the chosen trials and the training config")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_fidelity)

    p = subparsers.add_parser("rerank", help="retrain the K best trials with more seeds; rank them by mean quality",
                              description="Are the front-runners apart beyond seed noise? Retrain the K best "
                                          "feasible trials with --seeds more seeds each, rank them by their mean "
                                          "validation loss with its standard error, and say (Welch's t-test) "
                                          "whether the first is distinguishable from the second; saved in the "
                                          "study, STUDY_DIR/rerank.json and the export's report.md.")
    _retraining_args(p)
    p.add_argument("--top", type=int, default=5, help="the K best feasible trials by proxy quality (K >= 3)")
    p.add_argument("--seeds", type=positive_int, default=2, help="seeds beyond the study's own run")
    p.add_argument("--images", type=positive_int, default=None, help=with_default("training budget", "the proxy's"))
    p.add_argument("--out", default=None,
                   help=with_default("folder of the runs, shared with fidelity --noise-seeds",
                                     "STUDY_DIR/fidelity/noise"))
    p.add_argument("--dry-run", action="store_true", help="print the chosen trials, seeds and runs, train nothing")
    p.set_defaults(run=_rerank)


def _retraining_args(p: argparse.ArgumentParser) -> None:
    """What ``fidelity`` and ``rerank`` share: the study, parallel runs, the report, the device."""
    p.add_argument("study_dir", metavar="STUDY_DIR", help="study folder of 'memekit search'")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="runs trained at once (spawned processes sharing the CPU threads or the device)")
    p.add_argument("--export", default=None, help=with_default("export whose report.md gets the result",
                                                               "STUDY_DIR/export, if it exists"))
    p.add_argument("--device", default=None, help=with_default("cpu, cuda or cuda:N", "the study's device"))
