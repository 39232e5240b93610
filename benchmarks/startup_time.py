"""Start-up time of the command line before and after the fast start of issue 27, beside ``import torch``.

The **before** tree is a git revision (default ``65630ae``, the commit before this work) checked out
as a worktree and installed with ``pip install --no-deps --no-build-isolation --target SITE`` into a
folder of its own; it runs as ``PYTHONPATH=SITE python -m memekit ...``, and the script checks that
``memekit.search.cli``, ``memekit.space`` and ``memekit.analysis`` then come from SITE (not from this
checkout's editable install). The **after** tree is this checkout, run as ``python -m memekit ...``
with no ``PYTHONPATH``.

Each round runs ``python -c "import torch"`` and every command of both trees once, each in a fresh
process, in an order that alternates between rounds (so a change in the machine's other work
falls on both trees alike); a command's ratio is its time over the ``import torch`` time of the
same round. The table gives the median over rounds of the seconds and of the ratios. Every run
must exit 0 (the script stops otherwise). ``space check`` is given ``meme-paper`` as a spec JSON
written by the script, the only form the before tree accepts; the after tree is also timed with
the preset's name.

Usage (about rounds x (twice the CLI's start-up + import torch); slow on a loaded machine)::

    python benchmarks/startup_time.py                       # 5 rounds, before = 65630ae
    python benchmarks/startup_time.py --rounds 3 --before HEAD~5 --keep
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = ("import torch", ["-c", "import torch"])


def commands(spec_json: Path) -> list[tuple[str, list[str], bool]]:
    """(label, python arguments, whether the before tree runs it too)."""
    cli = ["-m", "memekit"]
    return [("memekit --help", [*cli, "--help"], True),
            ("memekit --version", [*cli, "--version"], True),
            ("memekit space check meme-paper.json", [*cli, "space", "check", str(spec_json)], True),
            ("memekit space check meme-paper", [*cli, "space", "check", "meme-paper"], False),
            ("memekit search --help", [*cli, "search", "--help"], True)]


def run_once(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``python ARGS`` in a fresh process; stops the script when it fails."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"python {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds


def install_before(revision: str, work: Path) -> tuple[Path, Path]:
    """The before tree as a worktree and a --target install of it: (worktree, site folder)."""
    tree, site = work / "mk-before", work / "mk-before-site"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), revision], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(tree)], check=True)
    return tree, site


def check_origin(env: dict[str, str], expected: Path) -> None:
    """Stop unless the memekit that ``env`` imports lies under ``expected``."""
    code = ("import memekit.search.cli as c, memekit.space as s, memekit.analysis as a\n"
            "print(c.__file__); print(s.__file__ or list(s.__path__)[0]); print(a.__file__ or list(a.__path__)[0])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    for line in done.stdout.split():
        if not Path(line).resolve().is_relative_to(expected.resolve()):
            sys.exit(f"memekit module {line} is not under {expected}: the tree would not run its own code")


def measure(rounds: int, runs: list[tuple[str, str, list[str], dict[str, str]]]) -> dict[tuple[str, str], list]:
    """``{(tree, label): [(seconds, ratio to import torch of the round), ...]}``."""
    results: dict[tuple[str, str], list] = {}
    for r in range(rounds):
        order = runs if r % 2 == 0 else runs[::-1]  # import torch first in even rounds, last in odd ones
        times = {(tree, label): run_once(args, env) for tree, label, args, env in order}
        torch_s = times[("", TORCH[0])]
        for key, seconds in times.items():
            results.setdefault(key, []).append((seconds, seconds / torch_s))
        print(f"round {r + 1}/{rounds}: import torch {torch_s:.2f} s", file=sys.stderr, flush=True)
    return results


def table(results: dict[tuple[str, str], list], labels: list[str]) -> list[str]:
    def cell(key: tuple[str, str]) -> str:
        if key not in results:
            return "n/a (not accepted)"
        values = results[key]
        return (f"{statistics.median(s for s, _ in values):.2f} s "
                f"({statistics.median(q for _, q in values):.2f} x)")

    torch_s = statistics.median(s for s, _ in results[("", TORCH[0])])
    lines = ["| command | before | after |", "|---|---|---|", f"| `python -c \"import torch\"` | {torch_s:.2f} s "
             f"(1 x) | {torch_s:.2f} s (1 x) |"]
    lines += [f"| `{label}` | {cell(('before', label))} | {cell(('after', label))} |" for label in labels]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="65630ae", help="git revision of the before tree (default: 65630ae)")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (default: 5)")
    parser.add_argument("--keep", action="store_true", help="keep the before worktree and its install")
    args = parser.parse_args()
    load_before, date = os.getloadavg(), datetime.datetime.now().isoformat(timespec="seconds")
    work = Path(tempfile.mkdtemp(prefix="memekit-startup-"))
    tree = None
    try:
        tree, site = install_before(args.before, work)
        after_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        before_env = {**after_env, "PYTHONPATH": str(site)}
        check_origin(before_env, site)
        check_origin(after_env, REPO)
        spec_json = work / "meme-paper.json"
        subprocess.run([sys.executable, "-c", "from memekit.space import get_preset, save_spec; "
                        f"save_spec(get_preset('meme-paper'), {str(spec_json)!r})"], env=after_env, check=True)
        cmds = commands(spec_json)
        runs = [("", TORCH[0], TORCH[1], after_env)]
        for label, cli_args, both in cmds:
            runs.append(("after", label, cli_args, after_env))
            if both:
                runs.append(("before", label, cli_args, before_env))
        results = measure(args.rounds, runs)
    finally:
        if tree is not None and not args.keep:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"date {date}; {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average (1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"before: {args.before} (PYTHONPATH=SITE python -m memekit); after: {head}{' + local changes' * bool(dirty)} "
          f"(python -m memekit); median of {args.rounds} paired rounds, seconds (ratio to import torch in the "
          "same round)\n")
    print("\n".join(table(results, [label for label, _, _ in cmds])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
