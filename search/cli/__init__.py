"""The ``memekit`` command line: thin argparse subcommands over the Python API.

One module per command group (:mod:`.space`, :mod:`.analysis`, :mod:`.train`, :mod:`.search`,
:mod:`.results`, :mod:`.retrain`, :mod:`.fid`); each registers its subparsers with
``register(subparsers)`` and attaches a ``run(args) -> int`` through ``set_defaults``, a few lines
over a public function of :mod:`memekit.space`, :mod:`memekit.analysis` or :mod:`memekit.search`.
Nothing outside this package imports it. User errors (:class:`MemekitError`) print one line and
exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from memekit.space.errors import MemekitError

from . import analysis, fid, results, retrain, search, space, train
from .args import OneLineParser

COMMAND_GROUPS = (space, analysis, train, search, results, retrain, fid)  # in help order


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="memekit",
        description="Architecture search for multi-expert diffusion models (MEME).",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (code 2, one line already printed) and --help (code 0)
        return int(exit_.code or 0)
    try:
        return int(args.run(args) or 0)
    except MemekitError as err:
        if args.debug:
            raise
        print(f"memekit: error: {err}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        print("memekit: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - last-resort one-line report
        if args.debug:
            raise
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        print(f"memekit: internal error: {type(err).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
