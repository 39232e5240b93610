"""Search throughput: proxy trials per hour, and what a trial costs besides its proxy training.

One single-worker study per storage (the default journal file; PostgreSQL when ``--postgres URL``
or ``$MEMEKIT_TEST_POSTGRES_URL`` is given) runs ``--trials`` trials of the real objective
(:class:`memekit.search.objective.Objective` through :func:`memekit.search.workers.run_worker`)
with the real proxy training at ``--resolution`` px. The worker's critical path is split by
wrapping the study's seams (:class:`memekit.search.study.Seams`: exclusive times, main thread only,
so nested calls are not counted twice and the journal heartbeat thread is left out):

- **train**: ``train(...)``, the proxy run itself (training, validation, end-of-run sample grid);
- **storage**: every public method of the Optuna storage object (journal or RDB) that the study,
  the sampler and memekit's sweep/heartbeat bookkeeping call on the main thread;
- **sampler**: the sampler's ``infer_relative_search_space``, ``sample_relative``,
  ``sample_independent``, ``before_trial`` and ``after_trial`` (their storage reads excluded);
- **cost model**: ``spec_cost`` (torch ``FlopCounterMode`` over every expert);
- **gc**: ``gc.collect()`` after every trial (``gc_after_trial=True``);
- **other**: the rest of the wall time (Optuna and memekit glue, spec building, artifacts).

overhead = wall - train, per trial; overhead % = overhead / wall. trials/hour = 3600 / (wall per
trial). Before the timed trials the study gets ``--history`` finished trials whose proxy run is
a stand-in (a loss computed from the spec, no training), so the timed trials see the TPE model
(it starts after 10 trials) on a study of realistic size, not its random start-up. One warm-up
trial in a throw-away study first pays the one-off costs (imports such as
``torch._dynamo`` on the first cost-model call, data rendering, CUDA context); it is reported
separately and not counted. The goal on a GPU: >= 60 trials/hour with a ~10k-image proxy, and
overhead < 1 % of the trial.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/search_throughput.py --device cpu --trials 5 --proxy-images 512
    python benchmarks/search_throughput.py --device cuda --trials 10 --proxy-images 10000 \\
        --postgres postgresql+psycopg2://user:password@host/db
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from memekit.search.storage import redact_url
from memekit.search.study import DEFAULT_SEAMS, Seams, SearchConfig, prepare_study
from memekit.search.workers import run_worker

CATEGORIES = ("train", "storage", "sampler", "cost model", "gc", "other")
SAMPLER_METHODS = ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial",
                   "after_trial")
GOAL_TRIALS_PER_HOUR = 60
GOAL_OVERHEAD = 0.01


class ExclusiveClock:
    """Exclusive wall time per category of wrapped calls on the main thread."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []  # [category, start of the current slice]

    def wrap(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)
            now = time.perf_counter()
            if self._stack:  # pause the caller's slice
                self.totals[self._stack[-1][0]] += now - self._stack[-1][1]
            self._stack.append([category, now])
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                name, start = self._stack.pop()
                self.totals[name] += end - start
                if self._stack:
                    self._stack[-1][1] = end

        return timed


def _instrument_methods(obj: Any, names: list[str], category: str, clock: ExclusiveClock) -> None:
    for name in names:
        method = getattr(obj, name, None)
        if callable(method):
            setattr(obj, name, clock.wrap(category, method))  # instance attribute shadows the method


@contextlib.contextmanager
def instrumented(clock: ExclusiveClock) -> Iterator[Seams]:
    """Seams whose train, spec_cost, storage and sampler are timed, and a timed gc.collect."""
    saved = DEFAULT_SEAMS

    def open_storage(*args: Any, **kwargs: Any) -> optuna.storages.BaseStorage:
        storage = saved.open_storage(*args, **kwargs)
        public = [n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_")]
        _instrument_methods(storage, public, "storage", clock)
        return storage

    def make_sampler(*args: Any, **kwargs: Any) -> optuna.samplers.BaseSampler:
        sampler = saved.make_sampler(*args, **kwargs)
        _instrument_methods(sampler, list(SAMPLER_METHODS), "sampler", clock)
        return sampler

    collect = gc.collect
    gc.collect = clock.wrap("gc", collect)
    try:
        yield Seams(train=clock.wrap("train", saved.train), spec_cost=clock.wrap("cost model", saved.spec_cost),
                    open_storage=open_storage, make_sampler=make_sampler)
    finally:
        gc.collect = collect


@dataclass(frozen=True)
class Row:
    storage: str
    device: str
    trials: int
    proxy_images: int
    wall_s: float  # per trial
    seconds: dict[str, float]  # per trial, by category
    warmup_s: float

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.seconds["train"]

    @property
    def overhead_fraction(self) -> float:
        return self.overhead_s / self.wall_s

    @property
    def trials_per_hour(self) -> float:
        return 3600.0 / self.wall_s


def search_config(args: argparse.Namespace, folder: Path, storage: str | None, n_trials: int) -> SearchConfig:
    return SearchConfig(study_dir=str(folder), study_name=f"bench-{uuid.uuid4().hex[:10]}", storage=storage,
                        space=args.space, resolution=args.resolution, data=args.data, n_trials=n_trials,
                        proxy_images=args.proxy_images, proxy_batch=args.proxy_batch,
                        proxy_warmup_images=min(1000, args.proxy_images), val_images=args.val_images,
                        seed=args.seed, warm_start=(), device=args.device, mixed_precision=args.mixed_precision,
                        heartbeat_interval=30, grace_period=120)


def stand_in_train(spec: Any, config: Any, run_dir: Any, **kwargs: Any) -> Any:
    """A proxy run that trains nothing: a loss from the spec, for the untimed history trials."""
    from memekit.search.train import TrainResult

    loss = 1.0 + sum(s for e in spec.experts for s in e.attention_share) / 10 + spec.boundaries[1] / 1000
    return TrainResult(run_dir=Path(run_dir), steps=0, images_seen=0, images_per_expert=[0] * spec.n_experts,
                       val={"val_loss": loss, "val_loss_quarters": [loss] * 4}, checkpoint=None, wall_time_s=0.0,
                       train_images_per_s=0.0)


def measure(args: argparse.Namespace, label: str, storage: str | None, workdir: Path) -> Row:
    """Warm-up trial, ``--history`` stand-in trials, then ``--trials`` timed trials on ``storage``."""
    start = time.perf_counter()
    warm = search_config(args, workdir / f"{label}-warmup", storage, 1)
    prepare_study(warm)
    run_worker(warm, progress=False)
    warmup_s = time.perf_counter() - start

    config = search_config(args, workdir / label, storage, args.history + args.trials)
    prepare_study(config)
    if args.history:
        run_worker(dataclasses.replace(config, n_trials=args.history), progress=False,
                   seams=Seams(train=stand_in_train))
    clock = ExclusiveClock()
    with instrumented(clock) as seams:
        start = time.perf_counter()
        run_worker(config, progress=False, seams=seams)
        wall = time.perf_counter() - start
    seconds = {c: clock.totals.get(c, 0.0) / args.trials for c in CATEGORIES if c != "other"}
    seconds["other"] = wall / args.trials - sum(seconds.values())
    _delete_rdb_studies(storage, (warm.study_name, config.study_name))
    return Row(label, args.device, args.trials, args.proxy_images, wall / args.trials, seconds, warmup_s)


def _delete_rdb_studies(storage: str | None, names: tuple[str, ...]) -> None:
    if storage is None:
        return
    rdb = optuna.storages.RDBStorage(storage)
    for name in names:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=rdb)
    rdb.engine.dispose()


def postgres_url(url: str) -> str:
    """SQLAlchemy >= 2.1 maps ``postgresql://`` to psycopg 3; use psycopg2 when psycopg is absent."""
    import importlib.util
    import re

    if re.match(r"^postgres(ql)?://", url) and importlib.util.find_spec("psycopg") is None:
        return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)
    return url


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def format_table(rows: list[Row]) -> str:
    head = ("| storage | device | trials | proxy images | s/trial | train s | overhead s (storage / sampler / "
            "cost model / gc / other) | overhead % | trials/hour | warm-up trial s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        s = r.seconds
        parts = " / ".join(f"{s[c]:.3f}" for c in CATEGORIES[1:])
        lines.append(f"| {r.storage} | {r.device} | {r.trials} | {r.proxy_images} | {r.wall_s:.2f} | "
                     f"{s['train']:.2f} | {r.overhead_s:.3f} ({parts}) | {100 * r.overhead_fraction:.1f} | "
                     f"{r.trials_per_hour:.0f} | {r.warmup_s:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--trials", type=int, default=5, help="timed trials per storage")
    p.add_argument("--proxy-images", type=int, default=512, help="proxy training budget (GPU goal: ~10000)")
    p.add_argument("--proxy-batch", type=int, default=64)
    p.add_argument("--val-images", type=int, default=64)
    p.add_argument("--space", default="tiny")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--data", default="builtin:shapes:1024")
    p.add_argument("--history", type=int, default=20, help="untimed stand-in trials before the timed ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no", help="proxy training (CUDA)")
    p.add_argument("--postgres", default=os.environ.get("MEMEKIT_TEST_POSTGRES_URL"),
                   help="PostgreSQL URL (default: $MEMEKIT_TEST_POSTGRES_URL); omit to time the journal only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workdir", default=None, help="study folders (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="also print one JSON line per row")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storages: list[tuple[str, str | None]] = [("journal", None)]
    if args.postgres:
        storages.append(("postgresql", postgres_url(args.postgres)))
    print(f"device {args.device} ({device_name(args.device)}), torch {torch.__version__}, optuna "
          f"{optuna.__version__}, space {args.space} at {args.resolution} px, proxy {args.proxy_images} images "
          f"(batch {args.proxy_batch}, {args.val_images} validation images), {args.trials} timed trials per storage "
          f"after {args.history} stand-in trials"
          + (f", postgres {redact_url(args.postgres)}" if args.postgres else ", no PostgreSQL URL given"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="memekit-search-bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        for label, url in storages:
            rows.append(measure(args, label, url, workdir))
            if args.json:
                r = rows[-1]
                print(json.dumps({"storage": r.storage, "device": r.device, "trials": r.trials,
                                  "proxy_images": r.proxy_images, "wall_s_per_trial": r.wall_s,
                                  "seconds_per_trial": r.seconds, "overhead_fraction": r.overhead_fraction,
                                  "trials_per_hour": r.trials_per_hour, "warmup_s": r.warmup_s}))
    print(format_table(rows))
    if args.device.startswith("cuda"):
        for r in rows:
            ok = r.trials_per_hour >= GOAL_TRIALS_PER_HOUR and r.overhead_fraction < GOAL_OVERHEAD
            print(f"goal ({GOAL_TRIALS_PER_HOUR} trials/hour, overhead < {GOAL_OVERHEAD:.0%}) on {r.storage}: "
                  f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
