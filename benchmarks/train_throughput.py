"""Training and sampling throughput of every preset in ``memekit.space.PRESETS``, measured through
memekit's own trainer and sampler.

For each preset at ``--resolution`` the script builds a :class:`memekit.search.train.Trainer`
(``mixed_precision="bf16"`` and ``channels_last`` on CUDA, fp32 on CPU), replaces its data with
synthetic uint8 images already on the device (no loader, no disk), and times, with
:func:`memekit.space.cost.measure_latency` (median of ``--iters`` calls after ``--warmup``
untimed ones, CUDA-synchronised):

- **train img/s** = ``batch / t`` for one ``Trainer._guarded_step()``: the step of ``memekit train``
  without logging, validation, sample grids or checkpoints, i.e. batch indexing and flips, soft
  interval time-steps, noise, per-expert forward + MSE + backward (each expert gets batch/N
  images), per-expert gradient clipping, AdamW, the EMA update and the finiteness check of the
  losses (a device sync, as in the real loop).
- **sample img/s DDIM-50** = ``n / t`` for ``sample_images(ema, n=--sample-batch, steps=50)``: whole
  DDIM trajectories with the EMA weights, including noise, x0 clipping and the uint8 conversion
  (warm-up: one 2-step trajectory).
- **forward img/s** = ``B S / sum_n s_n t_n``: ``t_n`` is one ``torch.no_grad`` forward of expert n at
  batch B = ``--sample-batch``, ``s_n`` the number of the S = 50 DDIM steps that expert n serves.
  It is the per-denoiser-evaluation rate of the trajectory's mix of experts; ``forward / 50`` is
  the trajectory rate the network alone allows, so the gap to the DDIM-50 column is sampler overhead.
- **MMACs/step** = MACs of one DDIM step for one image, averaged over the 50-step trajectory
  (:func:`memekit.space.spec_cost`; counter: ``torch FlopCounterMode`` + SDPA formula, CPU fp32,
  MACs = FLOPs / 2).
- **peak MB** = ``torch.cuda.max_memory_allocated`` over the preset's measurements on CUDA; on the CPU
  the ``ru_maxrss`` high-water mark of the process that ran the preset (each preset runs in a fresh
  spawned process unless ``--no-isolate``), which includes the Python + torch baseline printed
  in the header.

Usage::

    python benchmarks/train_throughput.py --device cpu --resolution 32 --threads 1
    python benchmarks/train_throughput.py --device cuda --resolution 32 --json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from memekit.search.sampling import sample_images
from memekit.search.train import TrainConfig, Trainer
from memekit.space import PRESETS, count_params, get_preset, spec_cost
from memekit.space.cost import COUNTER_NAME, measure_latency, trajectory_steps

DDIM_STEPS = 50
SYNTHETIC_IMAGES = 1024


@dataclass(frozen=True)
class BenchConfig:
    """Everything that determines a run; printed in the JSON line."""

    device: str
    resolution: int
    batch: int  # training images per step, all experts together
    sample_batch: int  # images per sampling trajectory / per timed forward
    warmup: int
    iters: int
    sample_iters: int  # timed DDIM-50 trajectories
    threads: int | None
    presets: tuple[str, ...]

    @property
    def cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"


class Row(NamedTuple):
    """One table row: a preset and its measured throughput."""

    preset: str
    experts: int
    params: int
    macs_per_step: float  # per image, mean over the DDIM-50 trajectory
    train_img_s: float
    sample_img_s: float  # whole DDIM-50 trajectories
    forward_img_s: float  # denoiser evaluations, trajectory mix of experts
    peak_mb: float


def _autocast(config: BenchConfig) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if config.cuda else contextlib.nullcontext()


def _trainer(name: str, config: BenchConfig, run_dir: str) -> Trainer:
    """A Trainer of preset ``name`` whose data are synthetic uint8 images on the device."""
    spec = get_preset(name, config.resolution)
    train_config = TrainConfig(images=config.batch, batch=config.batch, warmup_images=0,
                               mixed_precision="bf16" if config.cuda else "no", channels_last=True,
                               device=config.device)
    trainer = Trainer(spec, train_config, run_dir, progress=False)
    gen = torch.Generator().manual_seed(0)
    shape = (SYNTHETIC_IMAGES, config.resolution, config.resolution, spec.experts[0].image_channels)
    trainer.train_images = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(config.device)
    return trainer


def train_rate(trainer: Trainer, config: BenchConfig) -> float:
    """Training images/s of ``Trainer._guarded_step`` (see the module docstring)."""

    def step() -> None:
        trainer._guarded_step()
        trainer.step += 1  # the next step draws new randomness, as in the loop

    return config.batch / measure_latency(step, config.warmup, config.iters, config.device)


def sample_rate(trainer: Trainer, config: BenchConfig) -> float:
    """Images/s of whole DDIM-50 trajectories with the EMA weights."""
    model, spec = trainer.ema.module, trainer.spec
    mixed = "bf16" if config.cuda else "no"

    def trajectory(steps: int) -> None:
        sample_images(model, spec, config.sample_batch, steps=steps, batch=config.sample_batch,
                      device=config.device, mixed_precision=mixed, progress=False)

    trajectory(2)  # warm-up: touches the first and the last expert
    seconds = measure_latency(lambda: trajectory(DDIM_STEPS), 0, config.sample_iters, config.device)
    return config.sample_batch / seconds


def forward_rate(trainer: Trainer, config: BenchConfig) -> float:
    """Denoiser evaluations/s over the DDIM-50 mix of experts (see the module docstring)."""
    spec, model = trainer.spec, trainer.ema.module.eval()
    e = spec.experts[0]
    x = torch.randn(config.sample_batch, e.image_channels, e.resolution, e.resolution, device=config.device)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    seconds = 0.0
    for n, served in enumerate(trajectory_steps(spec, DDIM_STEPS)):
        if served == 0:
            continue
        t = torch.full((config.sample_batch,), spec.intervals[n][0], device=config.device, dtype=torch.long)
        expert = model.experts[n]

        def forward(expert: torch.nn.Module = expert, t: torch.Tensor = t) -> None:
            with torch.no_grad(), _autocast(config):
                expert(x, t)

        seconds += served * measure_latency(forward, config.warmup, config.iters, config.device)
    return config.sample_batch * DDIM_STEPS / seconds


def peak_mb(config: BenchConfig) -> float:
    if config.cuda:
        return torch.cuda.max_memory_allocated(torch.device(config.device)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_preset(name: str, config: BenchConfig) -> Row:
    """Measure one preset (run in a fresh process so that its peak memory is its own)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(torch.device(config.device))
    spec = get_preset(name, config.resolution)
    cost = spec_cost(spec, DDIM_STEPS)
    with tempfile.TemporaryDirectory() as run_dir:  # never written to: no prepare(), no checkpoint
        trainer = _trainer(name, config, run_dir)
        train = train_rate(trainer, config)
        trainer.optimizer.zero_grad(set_to_none=True)
        sample = sample_rate(trainer, config)
        forward = forward_rate(trainer, config)
    return Row(name, spec.n_experts, count_params(trainer.model), cost.mean_macs_per_step, train, sample,
               forward, peak_mb(config))


def baseline_mb() -> float:
    """ru_maxrss of a fresh process that has only imported torch and memekit (CPU peak baseline)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_fresh_process(fn: Callable[..., Any], *args: Any) -> Any:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def run_benchmark(config: BenchConfig, isolate: bool = True,
                  log: Callable[[str], None] = print) -> tuple[list[Row], float | None]:
    """One row per preset, and the CPU RSS baseline (None on CUDA or without isolation)."""
    baseline = _in_fresh_process(baseline_mb) if isolate and not config.cuda else None
    rows = []
    for name in config.presets:
        log(f"{name}: timing ...")
        rows.append(_in_fresh_process(bench_preset, name, config) if isolate else bench_preset(name, config))
    return rows, baseline


def format_table(rows: list[Row], config: BenchConfig) -> str:
    peak = "peak MB (GPU allocated)" if config.cuda else "peak MB (process RSS)"
    lines = ["| preset | experts | params | MMACs/step | train img/s | sample img/s DDIM-50 | forward img/s "
             f"| {peak} |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.preset} | {r.experts} | {r.params / 1e6:.2f}M | {r.macs_per_step / 1e6:.1f} "
                     f"| {r.train_img_s:.2f} | {r.sample_img_s:.3f} | {r.forward_img_s:.1f} | {r.peak_mb:.0f} |")
    return "\n".join(lines)


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--resolution", type=int, default=32, help="image size (presets: 32 or 64)")
    parser.add_argument("--batch", type=int, default=None, help="training batch, all experts (default 8 CPU, 128 CUDA)")
    parser.add_argument("--sample-batch", type=int, default=None,
                        help="images per trajectory (default 4 CPU, 256 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls (default 1 CPU, 5 CUDA)")
    parser.add_argument("--iters", type=int, default=None, help="timed train steps / forwards (default 3 CPU, 20 CUDA)")
    parser.add_argument("--sample-iters", type=int, default=None, help="timed trajectories (default 1 CPU, 3 CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    parser.add_argument("--no-isolate", action="store_true", help="measure all presets in this process")
    parser.add_argument("--json", action="store_true", help="end with one machine-readable JSON line")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device} but torch.cuda.is_available() is False")

    def default(value: int | None, on_cpu: int, on_cuda: int) -> int:
        return value if value is not None else (on_cuda if cuda else on_cpu)

    config = BenchConfig(device=args.device, resolution=args.resolution, batch=default(args.batch, 8, 128),
                         sample_batch=default(args.sample_batch, 4, 256), warmup=default(args.warmup, 1, 5),
                         iters=default(args.iters, 3, 20), sample_iters=default(args.sample_iters, 1, 3),
                         threads=args.threads, presets=tuple(args.presets))
    for name in ("batch", "sample_batch", "iters", "sample_iters"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in config.presets:
        n = get_preset(name, config.resolution).n_experts
        if config.batch % n:
            parser.error(f"--batch {config.batch} must be divisible by the {n} experts of {name}")
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    name = device_name(config.device)
    threads = config.threads or torch.get_num_threads()
    precision = "bf16 autocast, channels_last" if config.cuda else f"fp32, {threads} thread(s)"
    print(f"# train/sample throughput on {name}: {config.resolution} px, {precision}, train batch {config.batch}, "
          f"sample batch {config.sample_batch}, warmup {config.warmup}, iters {config.iters}, "
          f"trajectories {config.sample_iters}, torch {torch.__version__}", file=sys.stderr)
    rows, baseline = run_benchmark(config, isolate=not args.no_isolate, log=lambda s: print(s, file=sys.stderr))
    print(format_table(rows, config))
    notes = [f"MMACs/step: {COUNTER_NAME}, batch 1, mean over a DDIM-{DDIM_STEPS} trajectory.",
             f"forward img/s: one denoiser evaluation per image, DDIM-{DDIM_STEPS} mix of experts."]
    if baseline is not None:
        notes.append(f"CPU peak is the RSS high-water mark of the preset's process; an idle process with "
                     f"torch + memekit imported: {baseline:.0f} MB.")
    print("\n" + "\n".join(notes))
    if args.json:
        print(json.dumps({"benchmark": "train_throughput", "device_name": name, "torch": torch.__version__,
                          "config": dataclasses.asdict(config), "threads": threads, "mac_counter": COUNTER_NAME,
                          "ddim_steps": DDIM_STEPS, "baseline_rss_mb": baseline,
                          "rows": [r._asdict() for r in rows]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
