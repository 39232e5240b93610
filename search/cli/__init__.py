"""The ``memekit`` command line: thin argparse subcommands over the Python API.

One module per command group (:mod:`.space`, :mod:`.analysis`, :mod:`.encode`, :mod:`.train`, :mod:`.search`,
:mod:`.results`, :mod:`.retrain`, :mod:`.compare`, :mod:`.fid`); each registers its subparsers with
``register(subparsers)`` and attaches a ``run(args) -> int`` through ``set_defaults``, a few lines
over a public function of :mod:`memekit.space`, :mod:`memekit.analysis` or :mod:`memekit.search`.
Nothing outside this package imports it. User errors (:class:`MemekitError`) print one line and
exit with code 2 (usage errors name the subcommand's ``--help``); ``--debug`` shows the traceback
instead. Output into a pipe that closes early (``memekit ... | head``) ends quietly. Every command
that computes with torch first sets torch's threads by :func:`memekit.analysis.threads.choose_threads`
(``--threads N``, given before or after the command, overrides it); ``memekit space``, which reads
specs and tables, does not (its parser sets ``torch_threads=False``).

Start-up: the command modules import only torch-free modules at the top (the choices and defaults
their parsers show come from :mod:`memekit.space`, the ``*_config`` modules and a few others kept
torch-free for it) and the heavy ones inside their handlers, so ``--help``, ``--version`` and
``memekit space check PRESET`` answer without importing torch, Optuna, SciPy, pandas or matplotlib
(``tests/search/test_cli_startup.py``; timings: ``benchmarks/startup_time.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from memekit.analysis.threads import apply_threads, choose_threads
from memekit.space.errors import MemekitError

from . import analysis, compare, ema, encode, fid, package, results, retrain, search, space, train
from .args import OneLineParser, positive_int

COMMAND_GROUPS = (space, analysis, encode, train, ema, search, results, retrain, compare, fid, package)  # in help order
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a program whose reader went away


def memekit_version() -> str:
    """The installed distribution's version (``unknown`` when memekit runs from a source tree)."""
    try:
        return version("memekit")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="memekit",
        description="Architecture search for multi-expert diffusion models (MEME). 'memekit COMMAND --help' "
                    "describes each command; 'python -m memekit' is the same program.",
    )
    parser.add_argument("--version", action="version", version=f"memekit {memekit_version()}",
                        help="print memekit's version and exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--threads", type=positive_int, default=None, help=THREADS_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    _add_threads_option(subparsers)
    return parser


THREADS_HELP = ("torch threads per process (default: the cores this process may use that other programs leave "
                "free, shared among --workers; OMP_NUM_THREADS or MKL_NUM_THREADS when set)")


def _add_threads_option(subparsers: argparse._SubParsersAction) -> None:
    """``--threads`` after every command too (``memekit train ... --threads 2``); SUPPRESS keeps a
    value given before the command."""
    for command in dict.fromkeys(subparsers.choices.values()):  # aliases map to the same parser
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:
            _add_threads_option(action)
        if not nested and "--threads" not in command._option_string_actions:
            command.add_argument("--threads", type=positive_int, default=argparse.SUPPRESS, help=THREADS_HELP)


def _quiet_broken_pipe() -> int:
    """stdout's reader went away: point stdout at /dev/null so that the final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass
    return BROKEN_PIPE_EXIT


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:  # usage errors (code 2, one line already printed), --help, --version
            sys.stdout.flush()
            return int(exit_.code or 0)
        code = _run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "torch_threads", True):
            apply_threads(choose_threads(getattr(args, "workers", None) or 1, args.threads))
        return int(args.run(args) or 0)
    except BrokenPipeError:
        raise
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
