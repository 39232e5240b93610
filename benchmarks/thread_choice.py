"""Training img/s under memekit's thread choice and under 1 and 2 torch threads, idle and loaded.

For each condition, **as found** (whatever else runs on the machine; idle when nothing does) and
**loaded** (this script adds one busy process, a Python ``while True`` loop, so one more core is
taken), and for each setting, **memekit's choice** (:func:`memekit.analysis.threads.choose_threads`
for one worker, made in the cell's process after the load started, no ``OMP_NUM_THREADS``),
**1** and **2** threads (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``), a fresh process builds a
:class:`memekit.search.train.Trainer` of ``--preset`` at ``--resolution`` with synthetic uint8 data
in memory (no loader, no disk), runs ``--warmup`` untimed steps of ``train_step`` (the optimiser
step of ``memekit train``: per-expert forward, loss, backward, clipping, AdamW, EMA), then times
steps for ``--seconds`` (at least ``--min-steps`` steps, but at most ``--max-seconds`` once one step is timed).

Reported per cell: the cores other programs kept busy just before it (``busy_cores``, the input of
the rule), the threads used, img/s = ``batch * steps / time`` and its standard error from the spread
of the step times (``rate * sd / (mean * sqrt(steps))``; steps under load are correlated, so read it
as a lower bound). The cells of one condition run one after another, not interleaved, so a change
in the machine's other work between cells shows in the busy column.

Usage (about 6 x (seconds + 10) s on an idle machine; the loaded half takes a core from everything
else)::

    python benchmarks/thread_choice.py
    python benchmarks/thread_choice.py --preset meme-paper --resolution 16 --batch 16 --seconds 3 --warmup 1 \
        --min-steps 2 --max-seconds 6   # a brief look on a busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

from memekit.analysis.threads import THREAD_ENV, available_cores, busy_cores

SETTINGS = ("memekit", "1", "2")
CONDITIONS = ("as found", "loaded (+1 busy process)")
SYNTHETIC_IMAGES = 512


class Cell(NamedTuple):
    """One timed cell of the table."""

    condition: str
    busy_before: int  # cores other programs kept busy just before the cell
    setting: str  # "memekit" or a thread count
    threads: int  # torch.get_num_threads() in the cell
    img_s: float
    se: float  # standard error of img_s from the step times
    steps: int


def time_cell(preset: str, resolution: int, batch: int, warmup: int, seconds: float, min_steps: int,
              max_seconds: float) -> dict:
    """In this (fresh) process: apply memekit's thread rule, then time Trainer.train_step."""
    import torch

    from memekit.analysis.threads import apply_threads, choose_threads
    from memekit.search.train import TrainConfig, Trainer
    from memekit.space import get_preset

    choice = choose_threads(1)
    apply_threads(choice)
    spec = get_preset(preset, resolution)
    config = TrainConfig(images=batch, batch=batch, warmup_images=0, device="cpu")
    with tempfile.TemporaryDirectory() as run_dir:  # never written to: no prepare(), no checkpoint
        trainer = Trainer(spec, config, run_dir, progress=False)
        gen = torch.Generator().manual_seed(0)
        trainer.train_images = torch.randint(0, 256, (SYNTHETIC_IMAGES, resolution, resolution, 3), generator=gen,
                                             dtype=torch.uint8)
        for _ in range(warmup):
            trainer.train_step()
            trainer.step += 1
        durations: list[float] = []
        start = time.perf_counter()

        def more() -> bool:
            elapsed = time.perf_counter() - start
            if not durations or elapsed >= max_seconds:
                return not durations
            return elapsed < seconds or len(durations) < min_steps

        while more():
            t = time.perf_counter()
            trainer.train_step()
            trainer.step += 1  # the next step draws new randomness, as in the loop
            durations.append(time.perf_counter() - t)
    mean = statistics.fmean(durations)
    rate = batch / mean
    sd = statistics.stdev(durations) if len(durations) > 1 else float("nan")
    return {"threads": torch.get_num_threads(), "img_s": rate, "se": rate * sd / (mean * len(durations) ** 0.5),
            "steps": len(durations), "choice_busy": choice.busy}


def run_cell(args: argparse.Namespace, condition: str, setting: str) -> Cell:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    if setting != "memekit":
        env.update(dict.fromkeys(THREAD_ENV, setting))
    busy = busy_cores(available_cores())
    cmd = [sys.executable, __file__, "--cell", "--preset", args.preset, "--resolution", str(args.resolution),
           "--batch", str(args.batch), "--warmup", str(args.warmup), "--seconds", str(args.seconds),
           "--min-steps", str(args.min_steps), "--max-seconds", str(args.max_seconds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return Cell(condition, busy, setting, result["threads"], result["img_s"], result["se"], result["steps"])


def run_benchmark(args: argparse.Namespace) -> list[Cell]:
    """Every setting as found, then every setting beside one busy process of this script's."""
    cells = []
    for condition in CONDITIONS:
        load = None
        if condition != CONDITIONS[0]:
            load = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            for setting in SETTINGS:
                cells.append(run_cell(args, condition, setting))
                c = cells[-1]
                print(f"  {condition} ({c.busy_before} busy), {setting}: {c.threads} thread(s), {c.img_s:.1f} img/s, "
                      f"{c.steps} steps",
                      file=sys.stderr, flush=True)
        finally:
            if load is not None:
                load.terminate()
                load.wait()
    return cells


def table(cells: list[Cell]) -> str:
    lines = ["| condition | busy cores before | setting | threads | img/s | steps |", "|---|---|---|---|---|---|"]
    for c in cells:
        setting = "memekit's choice" if c.setting == "memekit" else f"{c.setting} thread{'s' * (c.setting != '1')}"
        se = f" ± {c.se:.1f}" if c.steps > 1 else ""
        lines.append(f"| {c.condition} | {c.busy_before} | {setting} | {c.threads} | {c.img_s:.1f}{se} | {c.steps} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="meme-paper")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per cell")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per cell")
    parser.add_argument("--min-steps", type=int, default=3, help="timed steps per cell at least")
    parser.add_argument("--max-seconds", type=float, default=40.0, help="timed seconds per cell at most (>= 1 step)")
    parser.add_argument("--cell", action="store_true", help=argparse.SUPPRESS)  # one cell, in a fresh process
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(time_cell(args.preset, args.resolution, args.batch, args.warmup, args.seconds,
                                   args.min_steps, args.max_seconds)))
        return 0
    import torch

    cores = available_cores()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, {cores} cores available "
          f"({os.cpu_count()} CPUs), torch {torch.__version__}; {args.preset} at {args.resolution} px, batch "
          f"{args.batch}, {args.warmup} warm-up steps, {args.seconds:g} s per cell; load average "
          f"{os.getloadavg()[0]:.2f} at the start")
    print(table(run_benchmark(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
