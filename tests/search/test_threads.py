"""Torch threads per process: the rule of memekit.analysis.threads, cgroup quotas, busy cores, the
search launcher's workers and the CLI's --threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_workers import tiny_search

import memekit.analysis.threads as threads
import memekit.search.workers as workers_module
from memekit.analysis.threads import ThreadChoice, cgroup_cpu_limit, choose_threads, describe
from memekit.search.cli import main
from memekit.space.errors import MemekitError


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch):
    """No thread variables, nothing applied yet; torch back to the suite's one thread afterwards."""
    for name in threads.THREAD_ENV:
        monkeypatch.setenv(name, "1")  # recorded, so that the teardown restores it whatever a test sets
        monkeypatch.delenv(name)
    monkeypatch.setattr(threads, "_applied", None)
    yield
    torch.set_num_threads(1)


def machine(monkeypatch: pytest.MonkeyPatch, cores: int, busy: int) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    monkeypatch.setattr(threads, "busy_cores", lambda _cores: busy)


# ---- the rule ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cores", "busy", "workers", "expected"), [
    (2, 0, 1, 2),  # one worker on an idle machine: every core
    (2, 0, 2, 1),  # two workers: a core each
    (2, 1, 1, 1),  # beside one busy process: the free core
    (2, 2, 1, 1),  # every core busy: still one thread
    (16, 0, 3, 5),  # shares round down
    (16, 4, 4, 3),
    (4, 0, 8, 1),  # more workers than cores
])
def test_free_cores_are_shared_among_workers(monkeypatch, cores, busy, workers, expected) -> None:
    machine(monkeypatch, cores, busy)
    assert choose_threads(workers) == ThreadChoice(expected, "chosen", cores, busy, workers)


def test_the_user_choice_wins(monkeypatch) -> None:
    machine(monkeypatch, 16, 15)
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # a list per nesting level: the first is torch's
    assert choose_threads(2)[:2] == (4, "OMP_NUM_THREADS")
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # torch reads MKL's before OMP's
    assert choose_threads(2)[:2] == (3, "MKL_NUM_THREADS")
    assert choose_threads(2, requested=7)[:2] == (7, "--threads")
    monkeypatch.setenv("MKL_NUM_THREADS", "lots")
    with pytest.raises(MemekitError, match=r"^MKL_NUM_THREADS='lots' is not a positive thread count: unset it"):
        choose_threads()


def test_the_choice_is_described_in_one_line() -> None:
    assert describe(ThreadChoice(1, "chosen", 2, 0, 2)) == ("threads: 1 per process (2 cores, 2 workers; "
                                                            "--threads to change)")
    assert describe(ThreadChoice(1, "chosen", 2, 1, 1)) == ("threads: 1 per process (2 cores, 1 busy with other work, "
                                                            "1 worker; --threads to change)")
    assert describe(ThreadChoice(3, "OMP_NUM_THREADS", 2, 0, 1)) == "threads: 3 per process (from OMP_NUM_THREADS)"


# ---- what the machine gives ----------------------------------------------------------------------------
def test_cgroup_v2_quota_is_the_smallest_on_the_way_up(tmp_path: Path) -> None:
    (tmp_path / "user" / "job").mkdir(parents=True)
    (tmp_path / "user" / "job" / "cpu.max").write_text("350000 100000\n")
    (tmp_path / "user" / "cpu.max").write_text("250000 100000\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/user/job\n") == 2.5
    assert cgroup_cpu_limit(tmp_path, "0::/\n") is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/elsewhere\n") == 1.5  # a path not seen here: the root still counts


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    folder = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("200000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n") == 2.0
    (folder / "cpu.cfs_quota_us").write_text("-1\n")  # no limit
    assert cgroup_cpu_limit(tmp_path, "3:cpu,cpuacct:/docker/abc\n") is None


def test_available_cores_take_the_quota_rounded_down(monkeypatch) -> None:
    monkeypatch.setattr(threads, "affinity_cpus", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2.5)
    assert threads.available_cores() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 0.5)
    assert threads.available_cores() == 1
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.available_cores() == 4


@pytest.mark.parametrize(("busy_ticks", "expected"), [(0, 0), (20, 0), (50, 1), (150, 2), (200, 2)])
def test_busy_cores_count_from_a_quarter_on(monkeypatch, busy_ticks, expected) -> None:
    """Two CPUs watched for 100 ticks each: busy_ticks / 100 cores' worth of other work."""
    monkeypatch.setattr(threads, "affinity_cpus", lambda: [0, 1])
    samples = iter([(1000, 5000), (1000 + busy_ticks, 5200)])
    monkeypatch.setattr(threads, "_cpu_times", lambda _cpus: next(samples))
    monkeypatch.setattr(threads.time, "sleep", lambda _s: None)
    assert threads.busy_cores(2) == expected


def test_busy_cores_scale_to_a_quota(monkeypatch) -> None:
    """Eight CPUs half busy, a quota of 4 cores: 2 of them count as busy."""
    monkeypatch.setattr(threads, "affinity_cpus", lambda: list(range(8)))
    samples = iter([(0, 0), (400, 800)])
    monkeypatch.setattr(threads, "_cpu_times", lambda _cpus: next(samples))
    monkeypatch.setattr(threads.time, "sleep", lambda _s: None)
    assert threads.busy_cores(4) == 2


# ---- the search launcher ---------------------------------------------------------------------------------
class FakeWorker:
    def __init__(self, cmd, env, **_kwargs) -> None:  # noqa: ANN001 - subprocess.Popen's signature
        self.env, self.returncode, self.pid = env, 0, 0

    def wait(self, timeout=None) -> int:  # noqa: ANN001
        return 0

    def poll(self) -> int:
        return 0


def test_launched_workers_get_their_share(tmp_path: Path, monkeypatch) -> None:
    machine(monkeypatch, 4, 1)
    started: list[FakeWorker] = []
    monkeypatch.setattr(workers_module, "prepare_study", lambda *args, **kwargs: None)
    monkeypatch.setattr(workers_module.subprocess, "Popen",
                        lambda cmd, env, **kw: started.append(FakeWorker(cmd, env)) or started[-1])
    lines: list[str] = []
    workers_module.run_search(tiny_search(tmp_path, workers=3), progress=False, say=lines.append)
    assert [(w.env["OMP_NUM_THREADS"], w.env["MKL_NUM_THREADS"]) for w in started] == [("1", "1")] * 3
    assert "threads: 1 per process (4 cores, 1 busy with other work, 3 workers; --threads to change)" in lines


def test_one_worker_runs_with_the_choice(tmp_path: Path, monkeypatch) -> None:
    machine(monkeypatch, 3, 1)
    seen: list[int] = []
    monkeypatch.setattr(workers_module, "prepare_study", lambda *args, **kwargs: None)
    monkeypatch.setattr(workers_module, "run_worker", lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    lines: list[str] = []
    workers_module.run_search(tiny_search(tmp_path, workers=1), progress=False, say=lines.append)
    assert seen == [2]  # torch's default would be every core of the machine
    assert "threads: 2 per process (3 cores, 1 busy with other work, 1 worker; --threads to change)" in lines


# ---- the command line ---------------------------------------------------------------------------------------
def spectrum_dry_run(tmp_path: Path) -> list[str]:
    """A command that computes with torch, in its cheapest form (nothing is measured or written)."""
    return ["spectrum", "builtin:shapes:8", "--out", str(tmp_path / "spectrum"), "--dry-run"]


@pytest.mark.parametrize("before", [True, False])
def test_threads_option_before_or_after_the_command(before, tmp_path, monkeypatch, capsys) -> None:
    machine(monkeypatch, 2, 0)
    torch.set_num_threads(2)
    command = spectrum_dry_run(tmp_path)
    assert main(["--threads", "1", *command] if before else [*command, "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1 and threads.applied_threads()[:2] == (1, "--threads")
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"  # for the processes it starts


def test_every_torch_command_applies_the_rule(tmp_path, monkeypatch, capsys) -> None:
    machine(monkeypatch, 2, 1)
    torch.set_num_threads(2)
    assert main(spectrum_dry_run(tmp_path)) == 0
    assert torch.get_num_threads() == 1 and threads.applied_threads() == ThreadChoice(1, "chosen", 2, 1, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")
    capsys.readouterr()
    assert main(spectrum_dry_run(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "OMP_NUM_THREADS='zero' is not a positive thread count" in err


def test_space_commands_leave_torch_threads_alone(monkeypatch, capsys) -> None:
    """memekit space reads specs and tables: it neither sets threads nor needs torch for it."""
    machine(monkeypatch, 2, 0)
    torch.set_num_threads(2)
    assert main(["space", "list"]) == 0 and main(["space", "check", "meme-paper", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 2 and threads.applied_threads() is None
