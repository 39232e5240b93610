"""``memekit export``: specs, table, plots and report of a study."""

from __future__ import annotations

import argparse
import json
import sys

from .args import positive_int, with_default


def _export(args: argparse.Namespace) -> int:
    import matplotlib

    from memekit.search.export import export_study
    from memekit.search.results import load_study, select_trials

    matplotlib.use("Agg")
    loaded = load_study(args.study_dir, args.storage, args.study)
    top = None if args.pareto else args.top
    if args.dry_run:
        chosen = [t.number for t in select_trials(loaded.study, top)]
        print(json.dumps({"study_name": loaded.study.study_name, "storage": loaded.where,
                          "config": loaded.config.to_dict(), "selection": "pareto" if top is None else f"top {top}",
                          "trials": chosen, "out": args.out}, indent=2))
        return 0
    result = export_study(loaded, args.out, top=top, overwrite=args.overwrite)
    for spec in result.specs:
        if spec.differences:
            print(f"memekit: warning: trial {spec.number}: {'; '.join(spec.differences)} (see report.md)",
                  file=sys.stderr)
    for note in result.notes:
        print(f"memekit: note: {note}", file=sys.stderr)
    print(f"exported {len(result.specs)} trial(s) of study {loaded.study.study_name!r} to {result.out}: "
          f"{', '.join(f'trial-{s.number:05d}.json' for s in result.specs)}; report.md, trials.csv, plots")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a study's chosen specs, trials.csv, plots and report.md",
                              description="Export a study: the spec JSON of each chosen trial (the feasible "
                                          "Pareto front, or the --top K by quality), trials.csv with every trial, "
                                          "the plots and report.md. Reads STUDY_DIR's search_config.json, or a "
                                          "--storage and --study given directly.")
    p.add_argument("study_dir", metavar="STUDY_DIR", nargs="?", default=None,
                   help="study folder of 'memekit search' (its search_config.json names storage and study)")
    p.add_argument("--storage", default=None, help=with_default("instead of STUDY_DIR: a journal file or "
                                                                "postgresql://...", "the one STUDY_DIR names"))
    p.add_argument("--study", default=None, help=with_default("study name (with --storage)",
                                                              "the one STUDY_DIR names"))
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pareto", action="store_true", help="the feasible Pareto front, as without --top")
    which.add_argument("--top", type=positive_int, default=None,
                       help=with_default("the K best feasible trials by quality", "the Pareto front"))
    p.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")
    p.add_argument("--dry-run", action="store_true", help="print the study and the chosen trials, write nothing")
    p.set_defaults(run=_export)
