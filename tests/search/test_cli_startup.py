"""The command line starts without the heavy libraries: building the parser, every command's --help
and ``memekit space check PRESET`` import no torch, torchvision, Optuna, pytorch-fid, SciPy, pandas
or matplotlib. Each check runs in a fresh interpreter (this test process has torch loaded already)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

from memekit.search.cli import COMMAND_GROUPS, build_parser
from memekit.space.cost import check_spec
from memekit.space.presets import get_preset

HEAVY = ("torch", "torchvision", "optuna", "pytorch_fid", "scipy", "pandas", "matplotlib")
REPORT = f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"


def fresh_python(code: str) -> list[str]:
    """Run ``code`` in a new interpreter; its last output line is the JSON list of heavy modules it
    imported, the lines before it what the code printed."""
    done = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}\n{REPORT}"], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_building_the_parser_imports_no_heavy_library() -> None:
    lines = fresh_python("import memekit.search.cli as c\nc.build_parser()")
    assert json.loads(lines[-1]) == []


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``parser``'s commands by name (empty for a parser without any)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def every_command() -> list[list[str]]:
    """The argv prefix of every command and subcommand, the program itself first."""
    commands = [[]]
    for name, parser in subcommands(build_parser()).items():
        commands += [[name]] + [[name, sub] for sub in subcommands(parser)]
    return commands


def test_every_help_and_the_version_import_no_heavy_library() -> None:
    commands = every_command()
    assert len(commands) > len(COMMAND_GROUPS)  # every command and subcommand, not only the groups
    code = ("import contextlib, io\nfrom memekit.search.cli import main\n"
            f"for argv in {commands!r} + [['--version']]:\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        code = main([*argv, '--help'] if argv != ['--version'] else argv)\n"
            "    print(code, len(out.getvalue()))")
    lines = fresh_python(code)
    assert json.loads(lines[-1]) == []
    shown = [line.split() for line in lines[:-1]]
    assert len(shown) == len(commands) + 1 and all(code == "0" and int(chars) > 0 for code, chars in shown)


def test_space_check_of_a_preset_imports_no_heavy_library() -> None:
    lines = fresh_python("from memekit.search.cli import main\nassert main(['space', 'check', 'meme-paper']) == 0")
    assert json.loads(lines[-1]) == []
    cost = check_spec(get_preset("meme-paper"), 50)  # in this process, torch loaded: the same numbers
    match = re.search(r"ok: meme-paper: .* ([\d,]+) parameters, ([\d.,]+) MMACs per sampling step", lines[0])
    assert match, lines
    assert int(match[1].replace(",", "")) == cost.params
    assert match[2] == f"{cost.mean_macs_per_step / 1e6:,.1f}"
