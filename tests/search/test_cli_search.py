"""``memekit search`` on bad input: one-line errors with exit code 2, and no password printed."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_memekit

TINY = ("--space", "tiny", "--data", "builtin:shapes:128", "--trials", "1", "--proxy-images", "32",
        "--proxy-batch", "16", "--val-images", "16", "--warm-start", "")


def closed_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("storage, scheme", [("mysql://memekit:sekrit@127.0.0.1/memekit", "mysql"),
                                             ("redis://:sekrit@127.0.0.1:6379/0", "redis"),
                                             ("study.db", "study.db")])
def test_unknown_storage_scheme(tmp_path: Path, cli, storage: str, scheme: str) -> None:
    code, out, err = cli("search", tmp_path / "study", "--storage", storage, *TINY)
    line = assert_one_line_error(code, err, contains=f"unsupported storage {scheme!r}")
    assert "postgresql://" in line  # names the supported ones
    assert "sekrit" not in out + err
    assert not (tmp_path / "study").exists()  # refused before anything is written


def test_unusable_sqlite_storage(tmp_path: Path, cli) -> None:
    """A SQLite file whose folder does not exist: the study cannot be created or found."""
    url = f"sqlite:///{tmp_path}/nonexistent-dir/x.db"
    code, out, err = cli("search", tmp_path / "study", "--storage", url, *TINY)
    assert_one_line_error(code, err, contains="cannot open storage sqlite:///")


def test_sqlite_with_several_workers(tmp_path: Path, cli) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    code, out, err = cli("search", tmp_path / "study", "--storage", url, "--workers", "2", *TINY)
    assert_one_line_error(code, err, contains="SQLite cannot take 2 concurrent writers")
    assert not (tmp_path / "x.db").exists()


MALFORMED_SPACES = [("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object"),
                    ('{"n_experts": [2], "colour": "blue"}', "unknown search-space field 'colour'"),
                    ('{"n_experts": [0]}', "n_experts must list integers")]


def _space_args(tmp_path: Path, text: str) -> list[str]:
    space = tmp_path / "space.json"
    space.write_text(text)
    args = list(TINY)
    args[args.index("tiny")] = str(space)
    return args


@pytest.mark.parametrize("text, message", MALFORMED_SPACES)
def test_malformed_space_json_dry_run(tmp_path: Path, cli, text: str, message: str) -> None:
    code, out, err = cli("search", tmp_path / "study", *_space_args(tmp_path, text), "--dry-run")
    assert_one_line_error(code, err, contains=message)
    assert out == ""


@pytest.mark.parametrize("text, message", MALFORMED_SPACES[::2])
def test_malformed_space_json_run(tmp_path: Path, text: str, message: str) -> None:
    result = run_memekit("search", tmp_path / "study", *_space_args(tmp_path, text))
    assert_one_line_error(result.returncode, result.stderr, contains=message)
    assert not (tmp_path / "study" / "trials").exists()  # no trial started


def test_missing_space_file(tmp_path: Path, cli) -> None:
    code, out, err = cli("search", tmp_path / "study", *TINY[:2], "--space", str(tmp_path / "absent.json"),
                         "--dry-run")
    assert_one_line_error(code, err, contains="is neither a preset")


@pytest.mark.parametrize("pruner", ["median", "hyperband", "wilcoxon"])
def test_pruner_with_multi_objective(tmp_path: Path, cli, pruner: str) -> None:
    code, out, err = cli("search", tmp_path / "study", "--pruner", pruner, *TINY)
    assert_one_line_error(code, err, contains="cannot prune multi-objective")
    assert not (tmp_path / "study").exists()
    # the same pruner is accepted in a single-objective study
    code, out, err = cli("search", tmp_path / "study", "--pruner", pruner, "--objective", "single", *TINY,
                         "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["pruner"] == pruner


@pytest.mark.parametrize("scheme, workers", [("postgresql", "1"), ("postgresql+psycopg2", "2")])
def test_an_unreachable_server_is_reported_before_any_study_is_announced(tmp_path: Path, scheme: str,
                                                                         workers: str) -> None:
    """The storage is reached before the study is announced: one line naming the URL with the password
    masked and what to check; no 'new study ...' banner, nothing written, the password nowhere."""
    url = f"{scheme}://memekit:sekrit@127.0.0.1:{closed_port()}/memekit_test"
    result = run_memekit("search", tmp_path / "study", "--storage", url, "--workers", workers, *TINY)
    line = assert_one_line_error(result.returncode, result.stderr,
                                 contains=f"cannot open storage {scheme}://memekit:***@127.0.0.1")
    assert "check that the server runs" in line
    assert result.stdout == ""  # no banner: nothing was announced
    assert "sekrit" not in result.stdout + result.stderr
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["summary", "json"])
def test_dry_run_reaches_the_storage_and_never_prints_the_password(tmp_path: Path, json_flag: tuple[str, ...]) -> None:
    url = f"postgresql://memekit:sekrit@127.0.0.1:{closed_port()}/memekit_test"
    result = run_memekit("search", tmp_path / "study", "--storage", url, *TINY, "--dry-run", *json_flag)
    assert_one_line_error(result.returncode, result.stderr, contains="cannot open storage postgresql://memekit:***@")
    assert result.stdout == "" and "sekrit" not in result.stderr
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("args, message", [(("bogus",), "invalid choice: 'bogus'"),
                                           (("search", "s", "--trials", "zero"), "--trials"),
                                           (("search", "s", "--sampler", "cmaes"), "invalid choice: 'cmaes'"),
                                           (("fidelity", "s"), "the following arguments are required: --images")])
def test_usage_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    """argparse's own errors (unknown command, bad type or choice, missing option) through the real
    entry point: one line naming the problem and the help to read, exit 2, no usage dump."""
    proc = run_memekit(*args)
    line = assert_one_line_error(proc.returncode, proc.stderr, contains=message)
    assert "--help" in line and "usage:" not in proc.stderr
