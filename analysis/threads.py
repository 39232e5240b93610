"""How many threads torch uses in each process: one rule for every command.

torch's default is one intra-op thread per core of the machine. That is right for one process on
an idle machine and badly wrong otherwise: OpenMP threads meet at a barrier after every operator,
so when a core is taken by another process (a second worker, another user's job) every operator
waits for a thread that is not running. On a shared 2-core machine a one-worker search trained at
2.2-2.5 img/s with torch's default of 2 threads and at 21-25 img/s with one thread.

**The rule** (:func:`choose_threads`), in order:

1. ``--threads N`` given to the command: N threads (and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
   are set to N for the processes it starts).
2. ``MKL_NUM_THREADS`` or ``OMP_NUM_THREADS`` set (torch reads MKL's first): that number.
3. Otherwise ``max(1, (cores - busy) // workers)`` threads per process, where

   - ``cores`` are the cores this process may use: its CPU affinity (``os.sched_getaffinity``),
     capped by a cgroup CPU quota (``cpu.max``, or ``cpu.cfs_quota_us / cpu.cfs_period_us``)
     rounded down, at least 1 (:func:`available_cores`);
   - ``busy`` is how many of them other programs keep busy when the command starts, measured over
     0.15 s from ``/proc/stat`` (a core counts from a quarter busy on; without ``/proc/stat`` the
     1-minute load average stands in) (:func:`busy_cores`);
   - ``workers`` is the number of processes of this command that train at once (``memekit search
     --workers``).

So one worker on an idle 2-core machine gets 2 threads, two workers 1 each, and one worker beside
another busy process 1. The choice is made when a command starts (the search launcher makes it
again for its workers) and printed in the run's first lines by :func:`describe`, e.g. ``threads:
1 per process (2 cores, 2 busy with other work, 1 worker; --threads to change)``. Thread counts
change the order of floating-point sums, so runs that must repeat bit for bit on the CPU should
give ``--threads``. The measured effect is in ``benchmarks/thread_choice.py``.

The module does not import torch until :func:`apply_threads` sets the count.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from memekit.space.errors import MemekitError

THREAD_ENV = ("MKL_NUM_THREADS", "OMP_NUM_THREADS")  # in the order torch reads them (MKL wins)
BUSY_FROM = 0.25  # a core counts as busy once other programs use more than this share of it
SAMPLE_SECONDS = 0.15  # how long busy_cores watches /proc/stat
CGROUP_ROOT = Path("/sys/fs/cgroup")


class ThreadChoice(NamedTuple):
    """Torch's intra-op threads for each process of a command, and why."""

    threads: int  # per process
    source: str  # "--threads", "MKL_NUM_THREADS", "OMP_NUM_THREADS" or "chosen"
    cores: int  # cores available to the process (affinity, cgroup quota)
    busy: int  # of those, busy with other programs when chosen (0 unless chosen)
    workers: int  # processes of the command sharing the cores


# ---- what the machine gives this process -----------------------------------------------------------
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_of(folder: Path) -> float | None:
    """CPUs allowed by the cgroup folder ``folder`` (v2 ``cpu.max`` or v1 CFS files); None: no limit."""
    v2 = _read(folder / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            return int(quota) / int(period)
        return None
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota and period and quota.isdigit() and period.isdigit() and int(period) > 0:
        return int(quota) / int(period)  # -1 (no limit) is not all digits
    return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """The CPUs this process's cgroups allow (the smallest quota on the way from its cgroup up to
    ``root``), or None without a quota. ``membership`` is ``/proc/self/cgroup``'s text."""
    if membership is None:
        membership = _read(Path("/proc/self/cgroup")) or ""
    folders = []
    for line in membership.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # cgroup v2: 0::/path
            folders.append((root, path))
        elif "cpu" in controllers.split(","):  # cgroup v1: N:cpu,cpuacct:/path
            folders += [(root / controllers, path), (root / "cpu", path)]
    limits = []
    for mount, path in dict.fromkeys(folders or [(root, "/")]):
        here = mount / path.strip("/")
        while True:  # inside a container the path may not exist under its own root: the root still counts
            quota = _quota_of(here)
            if quota is not None:
                limits.append(quota)
            if here == mount or mount not in here.parents:
                break
            here = here.parent
    return min(limits) if limits else None


def affinity_cpus() -> list[int]:
    """The CPUs this process may run on (all of the machine's where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (rounded down), >= 1."""
    cores = len(affinity_cpus())
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def _cpu_times(cpus: list[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies of ``cpus`` from /proc/stat; None where it cannot be read."""
    text = _read(Path("/proc/stat"))
    if text is None:
        return None
    wanted, busy, total = {f"cpu{i}" for i in cpus}, 0, 0
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def busy_cores(cores: int, seconds: float = SAMPLE_SECONDS) -> int:
    """How many of this process's ``cores`` other programs keep busy now (0..cores): the busy share of
    its CPUs over ``seconds`` (steal time counts as busy), scaled to ``cores`` when a quota allows
    fewer cores than the CPUs it may run on; a core counts from :data:`BUSY_FROM` on."""
    cpus = affinity_cpus()
    before = _cpu_times(cpus)
    if before is not None:
        time.sleep(seconds)
        after = _cpu_times(cpus)
    if before is None or after is None or after[1] <= before[1]:
        try:  # no /proc/stat: the load average over the whole machine
            used = os.getloadavg()[0] * len(cpus) / (os.cpu_count() or len(cpus))
        except OSError:
            return 0
    else:
        used = len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
    used *= cores / len(cpus)
    return min(cores, max(0, math.ceil(used - BUSY_FROM)))


# ---- the choice ----------------------------------------------------------------------------------------
def user_threads(environ: Mapping[str, str] | None = None) -> tuple[int, str] | None:
    """The thread count the environment sets for torch (``MKL_NUM_THREADS`` before ``OMP_NUM_THREADS``,
    as torch reads them) and the variable's name; a one-line error for a value that is not a count."""
    environ = os.environ if environ is None else environ
    for name in THREAD_ENV:
        value = environ.get(name, "").strip()
        if not value:
            continue
        first = value.split(",")[0].strip()  # OpenMP allows a list per nesting level
        if not first.isdigit() or int(first) < 1:
            raise MemekitError(f"{name}={value!r} is not a positive thread count: unset it or give --threads N")
        return int(first), name
    return None


def choose_threads(workers: int = 1, requested: int | None = None, environ: Mapping[str, str] | None = None,
                   cores: int | None = None, busy: int | None = None) -> ThreadChoice:
    """Threads per process for ``workers`` processes of one command (the rule of the module docstring):
    ``requested`` (``--threads``), else the environment's, else ``max(1, (cores - busy) // workers)``.
    ``cores`` and ``busy`` default to :func:`available_cores` and :func:`busy_cores`."""
    if workers < 1:
        raise MemekitError(f"workers must be >= 1, got {workers}")
    if requested is not None and requested < 1:
        raise MemekitError(f"--threads must be >= 1, got {requested}")
    cores = available_cores() if cores is None else cores
    if requested is not None:
        return ThreadChoice(requested, "--threads", cores, 0, workers)
    user = user_threads(environ)
    if user is not None:
        return ThreadChoice(user[0], user[1], cores, 0, workers)
    busy = busy_cores(cores) if busy is None else min(busy, cores)
    return ThreadChoice(max(1, (cores - busy) // workers), "chosen", cores, busy, workers)


def describe(choice: ThreadChoice) -> str:
    """The line a run prints first, e.g. ``threads: 1 per process (2 cores, 2 workers; --threads to change)``."""
    head = f"threads: {choice.threads} per process"
    if choice.source != "chosen":
        return f"{head} (from {choice.source})"
    cores = f"{choice.cores} core{'s' * (choice.cores != 1)}"
    busy = f", {choice.busy} busy with other work" if choice.busy else ""
    workers = f"{choice.workers} worker{'s' * (choice.workers != 1)}"
    return f"{head} ({cores}{busy}, {workers}; --threads to change)"


_applied: ThreadChoice | None = None


def apply_threads(choice: ThreadChoice) -> None:
    """Make ``choice`` this process's: ``torch.set_num_threads``; a ``--threads`` choice is also put in
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` so that the processes this one starts inherit it."""
    global _applied
    import torch

    torch.set_num_threads(choice.threads)
    if choice.source == "--threads":
        for name in THREAD_ENV:
            os.environ[name] = str(choice.threads)
    _applied = choice


def applied_threads() -> ThreadChoice | None:
    """The choice :func:`apply_threads` made this process's, or None (torch's own count then)."""
    return _applied
