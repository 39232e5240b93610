"""The command line behaves like the tools researchers already use: every option explained with
its default, ``--version``, ``python -m memekit``, usage errors that point to the subcommand's help,
quiet broken pipes, ``--dry-run`` on the commands that write."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_memekit, subprocess_env

from memekit.search.cli import build_parser
from memekit.search.cli.args import HelpFormatter

HELP_ONLY = ("help", "version")


def commands(parser: argparse.ArgumentParser, name: str = "memekit") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command's parser, depth first."""
    yield name, parser
    for action in parser._actions:  # argparse lists subcommands only through its actions
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from commands(child, f"{name} {sub}")


ALL = list(commands(build_parser()))


def test_every_command_is_reached() -> None:
    names = {name for name, _ in ALL}
    expected = {"space list", "space show", "space check", "spectrum", "features", "train", "sample", "search",
                "quickstart", "export", "fidelity", "rerank", "fid"}
    assert {f"memekit {n}" for n in expected} <= names


@pytest.mark.parametrize("name, parser", ALL, ids=[n for n, _ in ALL])
def test_every_option_has_help_and_shows_its_default(name: str, parser: argparse.ArgumentParser) -> None:
    formatter = HelpFormatter(name)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.dest in HELP_ONLY:
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{name} {label}: no help text"
        takes_value = action.nargs != 0 and action.option_strings
        text = formatter._get_help_string(action) % {**vars(action), "default": action.default}
        if takes_value and not action.required:
            assert "(default: " in text, f"{name} {label}: the help does not say the default: {text!r}"
        # one wording: every mention of a default is "(default: X)"
        assert text.lower().count("default") == text.count("(default: "), f"{name} {label}: {text!r}"


@pytest.mark.parametrize("name, parser", ALL, ids=[n for n, _ in ALL])
def test_every_command_has_a_description_that_its_help_shows(name: str, parser: argparse.ArgumentParser,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from memekit.search.cli import main

    assert parser.description and len(parser.description.split()) >= 5, f"{name}: no description"
    assert main([*name.split()[1:], "--help"]) == 0
    shown = "".join(capsys.readouterr().out.split())  # argparse rewraps the description (also at hyphens)
    assert "".join(parser.description.split()) in shown


def help_sections(text: str) -> dict[str, str]:
    """``--help`` output cut at its group headings (an unindented line ending in ':')."""
    sections, title = {}, ""
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
        sections[title] = sections.get(title, "") + line + "\n"
    return sections


def test_search_help_groups_the_options_and_says_the_resuming_rule_once_per_group(
        capsys: pytest.CaptureFixture[str]) -> None:
    from memekit.search.cli import main
    from memekit.search.search_config import SearchConfig

    assert main(["search", "--help"]) == 0
    sections = help_sections(capsys.readouterr().out)
    assert {"study", "proxy", "search", "run", "output"} <= set(sections)
    for title, text in sections.items():
        assert text.lower().count("resuming") <= 1, f"search --help, {title}: the resuming rule said twice"
    assert all(sections[g].lower().count("resuming") == 1 for g in ("study", "proxy", "search", "run"))
    parser = dict(ALL)["memekit search"]
    assert not [a.dest for a in parser._actions if "resuming" in (a.help or "").lower()]  # said by the groups
    # the "study" group holds exactly the settings that never change (what a trial measures)
    study = [a.dest for g in parser._action_groups if g.title == "study" for a in g._group_actions]
    assert set(study) <= set(SearchConfig.IDENTITY) and "--proxy-images" in sections["proxy"]


@pytest.mark.parametrize("name", ["memekit", "memekit search", "memekit train", "memekit space check"])
def test_help_prints_every_option_with_its_text(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from memekit.search.cli import main

    parser = dict(ALL)[name]
    assert main([*name.split()[1:], "--help"]) == 0
    out = capsys.readouterr().out
    for action in parser._actions:
        for option in action.option_strings:
            assert option in out
    assert "(default: 64)" in out if name == "memekit train" else True


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from memekit.search.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("memekit ")


def test_python_dash_m_memekit_is_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "memekit", "--version"], capture_output=True, text=True,
                            env=subprocess_env(), timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("memekit ")
    result = subprocess.run([sys.executable, "-m", "memekit", "space", "list"], capture_output=True, text=True,
                            env=subprocess_env(), timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and "meme-paper" in result.stdout


@pytest.mark.parametrize("args, prog", [(("search", "s", "--bogus", "1"), "memekit search"),
                                        (("space", "check", "x.json", "--bogus"), "memekit space check"),
                                        (("train", "tiny", "--lr", "1", "--nonsense"), "memekit train")])
def test_unknown_option_points_to_the_subcommands_help(args: tuple[str, ...], prog: str) -> None:
    result = run_memekit(*args)
    line = assert_one_line_error(result.returncode, result.stderr, contains="unrecognized arguments")
    assert line.startswith(f"{prog}: error:") and f"(see '{prog} --help')" in line


def test_broken_pipe_ends_quietly(tmp_path: Path) -> None:
    """A reader that goes away (``memekit ... --dry-run | head -0``) ends the command without a
    traceback or error message."""
    proc = subprocess.Popen([sys.executable, "-m", "memekit.search.cli", "search", str(tmp_path / "s"),
                             "--space", "tiny", "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=subprocess_env())
    proc.stdout.close()  # nobody reads: the first write fails with EPIPE
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert stderr == "", stderr
    assert code == 141
    assert not (tmp_path / "s").exists()


def test_sample_dry_run_prints_the_plan_and_writes_nothing(trained_run: Path, tmp_path: Path, cli) -> None:
    code, out, err = cli("sample", trained_run, "--out", tmp_path / "s.npz", "--n", "3", "--dry-run")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["n"] == 3 and plan["step"] == 4 and plan["format"] == "npz" and plan["weights"] == "EMA"
    assert not (tmp_path / "s.npz").exists()


def test_quickstart_dry_run_names_seed_and_device(tmp_path: Path, cli) -> None:
    code, out, err = cli("quickstart", tmp_path / "q", "--tiny", "--seed", "3", "--device", "cpu", "--dry-run")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["search"]["seed"] == 3 and plan["train"]["seed"] == 3
    assert plan["search"]["device"] == "cpu" and plan["train"]["device"] == "cpu"
    assert not (tmp_path / "q").exists()


def test_rerank_dry_run_plans_and_trains_nothing(tmp_path: Path, cli) -> None:
    from test_export import POINTS, fabricate_study

    fabricate_study(tmp_path / "study", POINTS)
    code, out, err = cli("rerank", tmp_path / "study", "--top", "3", "--seeds", "2", "--dry-run")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["trials"] == [1, 7, 3]  # the three best feasible trials by quality (1.0, 1.5, 2.0)
    assert plan["study_run_reused"] and plan["seeds_trained"] == [1, 2]  # seed 0 is the study's own run
    assert len(plan["runs"]) == 6 and plan["images"] == 16
    assert not (tmp_path / "study" / "fidelity").exists()
