"""``memekit package RUN OUT``: a thin command over :func:`memekit.search.package.package_run`."""

from __future__ import annotations

import argparse
import json

from .args import positive_int


def _package(args: argparse.Namespace) -> int:
    from memekit.search.package import package_plan, package_run

    options = dict(metrics=args.metrics or (), steps=args.steps, overwrite=args.overwrite)
    if args.dry_run:
        print(json.dumps(package_plan(args.run_dir, args.out, **options), indent=2))
        return 0
    report = package_run(args.run_dir, args.out, **options)
    print(f"packaged {report.checkpoint} (step {report.step:,}, EMA weights, {report.n_experts} expert(s)) -> "
          f"{report.out}; load it with MemePipeline.from_pretrained({str(report.out)!r}) from "
          "memekit.search.pipeline")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "package", help="write a run as a diffusers pipeline folder with a model card (needs diffusers)",
        description="Write RUN's EMA weights as a folder that diffusers loads: model_index.json, a scheduler equal "
                    "to memekit's schedule, one safetensors model per expert, MemePipeline "
                    "(memekit.search.pipeline), a model card README.md and spec.json. "
                    "MemePipeline.from_pretrained(OUT)(seed=S) samples what 'memekit sample RUN --seed S' does. "
                    "Needs diffusers: pip install memekit[diffusers].")
    p.add_argument("run_dir", metavar="RUN",
                   help="run folder of memekit train (its latest checkpoint) or a checkpoint .pt")
    p.add_argument("out", metavar="OUT",
                   help="the folder to write (written whole under a temporary name, then renamed)")
    p.add_argument("--metrics", metavar="FILE", action="append", default=None,
                   help="a 'memekit fid RUN ... --json FILE' file of this checkpoint, for the model card; repeat for "
                        "several (default: none)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="DDIM steps the card's cost per trajectory and its commands use (default: 50, or the model's "
                        "T when smaller)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty OUT")
    p.add_argument("--dry-run", action="store_true", help="check everything, print the plan and the card's "
                                                          "metadata as JSON, write nothing")
    p.set_defaults(run=_package)
