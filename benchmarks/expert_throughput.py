"""Training and sampling throughput of memekit experts against diffusers' ``UNet2DModel`` at
matched MACs.

For each attention share (0, 0.5, 1, the same share at every stage) the script builds the
``single-small`` expert layout (``channel_mult (1, 2, 2, 2)``, 2 blocks per stage, head_dim 8,
the preset's attention pooling) at ``--base-width``, counts its MACs per forward (batch 1, CPU,
fp32, :func:`memekit.space.cost.count_flops` / 2), and then picks the stage widths of a diffusers
``UNet2DModel`` in the google/ddpm-cifar10-32 layout (self-attention at the second level only)
whose MACs, counted the same way, are closest to the expert's (within ``MAC_TOLERANCE``).

Both models are timed with :func:`memekit.space.cost.measure_latency` (median, CUDA-synchronised):

- train img/s: ``batch / t`` for forward + MSE to a random target + backward + AdamW step;
- forward img/s: ``batch / t`` for one forward under ``torch.no_grad`` (denoiser evaluations);
  a DDIM-50 trajectory costs 50 of them, so trajectories/s = forward img/s / 50.

diffusers is a benchmark-only extra (``pip install 'memekit[bench]'``). Usage::

    python benchmarks/expert_throughput.py --device cpu --batch 8 --iters 5
    python benchmarks/expert_throughput.py --device cuda --dtype bf16 --channels-last --json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memekit.space import ExpertSpec, build_expert, count_params, get_preset
from memekit.space.cost import COUNTER_NAME, count_flops, measure_latency

SHARES = (0.0, 0.5, 1.0)
TIMESTEPS = 1000
DDIM_STEPS = 50
MAC_TOLERANCE = 0.05
# google/ddpm-cifar10-32: self-attention only at the second level (16x16 at 32 px); up blocks
# are listed deepest first, so the attention up block is the third
DIFFUSERS_DOWN = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
DIFFUSERS_UP = ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
DIFFUSERS_HEAD_DIM = 8


@dataclass(frozen=True)
class BenchConfig:
    """Everything that determines a run; printed in the JSON line."""

    device: str
    resolution: int
    batch: int
    dtype: str
    channels_last: bool
    warmup: int
    iters: int
    base_width: int
    threads: int  # torch.get_num_threads() during the run
    shares: tuple[float, ...] = SHARES


class Row(NamedTuple):
    """One table row: a model and its measured throughput."""

    model: str
    attention_share: float | None  # None for diffusers
    params: int
    macs: int  # per forward, batch 1
    train_img_s: float
    forward_img_s: float
    config: dict[str, Any]  # ExpertSpec dict or UNet2DModel kwargs


# ---- models ---------------------------------------------------------------------------------
def expert_spec(resolution: int, base_width: int, share: float) -> ExpertSpec:
    """The ``single-small`` expert layout at ``base_width`` with ``share`` at every stage."""
    layout = get_preset("single-small", resolution).experts[0]
    return dataclasses.replace(layout, base_width=base_width,
                               attention_share=(share,) * layout.n_stages)


class DiffusersDenoiser(nn.Module):
    """A ``UNet2DModel`` behind memekit's ``forward(x (B,C,H,W), t (B,)) -> (B,C,H,W)``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, return_dict=False)[0]


def diffusers_kwargs(widths: tuple[int, ...], resolution: int, image_channels: int) -> dict[str, Any]:
    """``UNet2DModel`` arguments: ddpm-cifar10 layout with the given stage widths."""
    return dict(sample_size=resolution, in_channels=image_channels, out_channels=image_channels,
                block_out_channels=widths, layers_per_block=2, down_block_types=DIFFUSERS_DOWN,
                up_block_types=DIFFUSERS_UP, attention_head_dim=DIFFUSERS_HEAD_DIM,
                # the largest group count <= 32 that divides every width
                norm_num_groups=math.gcd(32, *widths))


def build_diffusers(kwargs: dict[str, Any]) -> DiffusersDenoiser:
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise SystemExit("diffusers is not installed: pip install 'memekit[bench]' (or diffusers)") from None
    return DiffusersDenoiser(UNet2DModel(**kwargs))


def forward_macs(model: nn.Module, image_channels: int, resolution: int) -> int:
    """MACs of one forward of a CPU model for a single image (FLOPs / 2, memekit's counter)."""
    x = torch.zeros(1, image_channels, resolution, resolution)
    t = torch.zeros(1, dtype=torch.long)
    model.eval()
    return count_flops(lambda: model(x, t)) // 2


def match_diffusers(target_macs: int, resolution: int, image_channels: int,
                    base_width: int) -> tuple[dict[str, Any], int]:
    """The ``UNet2DModel`` whose MACs per forward are closest to ``target_macs``.

    Searches stage widths ``(a, b, b, b)``: ``a`` a multiple of 4, ``b`` a multiple of 8 (whole
    heads of 8) and ``1.5 <= b / a <= 2.5`` (near the expert's 1:2 width ratio), around the
    quadratic estimate ``w = base_width * sqrt(target / MACs(base_width))``. Ties go to b/a
    nearest 2. Raises if the best is more than ``MAC_TOLERANCE`` away.
    """
    cache: dict[tuple[int, ...], int] = {}

    def macs(widths: tuple[int, ...]) -> int:
        if widths not in cache:
            model = build_diffusers(diffusers_kwargs(widths, resolution, image_channels))
            cache[widths] = forward_macs(model, image_channels, resolution)
        return cache[widths]

    w = base_width * math.sqrt(target_macs / macs((base_width,) + (2 * base_width,) * 3))
    candidates = [(a, b) for a in range(4 * round(w / 4) - 8, 4 * round(w / 4) + 9, 4)
                  for b in range(8 * round(w / 4) - 16, 8 * round(w / 4) + 17, 8)
                  if a >= 4 and b >= 8 and 1.5 <= b / a <= 2.5]
    a, b = min(candidates, key=lambda ab: (abs(math.log(macs((ab[0],) + (ab[1],) * 3) / target_macs)),
                                           abs(ab[1] / ab[0] - 2)))
    widths = (a, b, b, b)
    error = macs(widths) / target_macs - 1
    if abs(error) > MAC_TOLERANCE:
        raise RuntimeError(f"no UNet2DModel within {MAC_TOLERANCE:.0%} of {target_macs / 1e6:.1f} MMACs "
                           f"(best {widths}: {error:+.1%})")
    return diffusers_kwargs(widths, resolution, image_channels), macs(widths)


# ---- timing ---------------------------------------------------------------------------------
def _inputs(config: BenchConfig, image_channels: int) -> tuple[torch.Tensor, ...]:
    shape = (config.batch, image_channels, config.resolution, config.resolution)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    x = torch.randn(shape, device=config.device).contiguous(memory_format=memory_format)
    target = torch.randn(shape, device=config.device).contiguous(memory_format=memory_format)
    t = torch.randint(0, TIMESTEPS, (config.batch,), device=config.device)
    return x, t, target


def _autocast(config: BenchConfig) -> contextlib.AbstractContextManager:
    return torch.autocast(torch.device(config.device).type, dtype=torch.bfloat16,
                          enabled=config.dtype == "bf16")


def train_step(model: nn.Module, config: BenchConfig, image_channels: int) -> Callable[[], None]:
    """A closure running one training step: forward, MSE to a random target, backward, AdamW."""
    x, t, target = _inputs(config, image_channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with _autocast(config):
            loss = F.mse_loss(model(x, t).float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def forward_step(model: nn.Module, config: BenchConfig, image_channels: int) -> Callable[[], None]:
    """A closure running one denoiser evaluation under ``torch.no_grad``."""
    x, t, _ = _inputs(config, image_channels)

    def step() -> None:
        with torch.no_grad(), _autocast(config):
            model(x, t)

    return step


def _to_device(model: nn.Module, config: BenchConfig) -> nn.Module:
    model = model.to(config.device)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def throughput(model: nn.Module, config: BenchConfig, image_channels: int) -> tuple[float, float]:
    """(train img/s, forward img/s) of a CPU-built model moved to ``config.device``."""
    model = _to_device(model, config).train()
    t_train = measure_latency(train_step(model, config, image_channels), config.warmup, config.iters,
                              config.device)
    model.eval()
    t_forward = measure_latency(forward_step(model, config, image_channels), config.warmup,
                                config.iters, config.device)
    return config.batch / t_train, config.batch / t_forward


# ---- the benchmark --------------------------------------------------------------------------
def run_benchmark(config: BenchConfig, log: Callable[[str], None] = print) -> list[Row]:
    """Expert and matched-diffusers rows, in pairs (expert first), one pair per share."""
    rows: list[Row] = []
    measured: dict[tuple[int, ...], Row] = {}
    for share in config.shares:
        spec = expert_spec(config.resolution, config.base_width, share)
        torch.manual_seed(0)
        expert = build_expert(spec)
        macs = forward_macs(expert, spec.image_channels, spec.resolution)
        kwargs, d_macs = match_diffusers(macs, spec.resolution, spec.image_channels, spec.base_width)
        log(f"share {share}: expert {macs / 1e6:.1f} MMACs, UNet2DModel {kwargs['block_out_channels']} "
            f"{d_macs / 1e6:.1f} MMACs ({d_macs / macs - 1:+.1%}); timing ...")
        rows.append(Row(f"memekit expert w{spec.base_width}", share, count_params(expert), macs,
                        *throughput(expert, config, spec.image_channels), spec.to_dict()))
        widths = kwargs["block_out_channels"]
        if widths not in measured:
            torch.manual_seed(0)
            unet = build_diffusers(kwargs)
            measured[widths] = Row(f"diffusers UNet2DModel {widths}", None, count_params(unet),
                                   d_macs, *throughput(unet, config, spec.image_channels), kwargs)
        rows.append(measured[widths])
        del expert
        if torch.device(config.device).type == "cuda":
            torch.cuda.empty_cache()
    return rows


class Ratio(NamedTuple):
    """Expert / matched diffusers throughput for one attention share."""

    attention_share: float
    train: float
    forward: float


def ratios(rows: list[Row]) -> list[Ratio]:
    """One :class:`Ratio` per (expert, diffusers) pair of ``run_benchmark`` rows."""
    return [Ratio(expert.attention_share, expert.train_img_s / reference.train_img_s,
                  expert.forward_img_s / reference.forward_img_s)
            for expert, reference in zip(rows[::2], rows[1::2], strict=True)]


def format_table(rows: list[Row]) -> str:
    """Markdown table; each expert row's ratios are against the diffusers row after it."""
    lines = ["| model | attention share | params | MMACs/forward | train img/s | forward img/s "
             "| DDIM-50 img/s | train ratio | forward ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for expert, reference, ratio in zip(rows[::2], rows[1::2], ratios(rows), strict=True):
        for row in (expert, reference):
            share = "-" if row.attention_share is None else f"{row.attention_share:g}"
            cells = (f"{ratio.train:.2f}x", f"{ratio.forward:.2f}x") if row is expert else ("", "")
            lines.append(f"| {row.model} | {share} | {row.params / 1e6:.2f}M | {row.macs / 1e6:.1f} "
                         f"| {row.train_img_s:.1f} | {row.forward_img_s:.1f} "
                         f"| {row.forward_img_s / DDIM_STEPS:.2f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    return platform.processor() or "cpu"


def profile_train_step(model: nn.Module, config: BenchConfig, image_channels: int, row_limit: int = 15) -> str:
    """torch.profiler table of the ops taking the most self time over a few training steps."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(config.device).type == "cuda"
    step = train_step(_to_device(model, config).train(), config, image_channels)
    for _ in range(max(config.warmup, 1)):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)


def _profile(config: BenchConfig) -> None:
    """Profile the share-0 expert and its matched UNet2DModel (training step)."""
    spec = expert_spec(config.resolution, config.base_width, 0.0)
    expert = build_expert(spec)
    kwargs, _ = match_diffusers(forward_macs(expert, 3, config.resolution), config.resolution,
                                spec.image_channels, config.base_width)
    for name, model in (("memekit expert, share 0", expert), (f"UNet2DModel {kwargs['block_out_channels']}",
                                                              build_diffusers(kwargs))):
        print(f"\n## profile: {name}, train step x3\n")
        print(profile_train_step(model, config, spec.image_channels))


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--resolution", type=int, default=None, help="image size (default 32 on CPU, 64 on CUDA)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8 on CPU, 128 on CUDA)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="bf16 = fp32 weights under torch.autocast(bfloat16)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls (default 2 CPU, 10 CUDA)")
    parser.add_argument("--iters", type=int, default=None, help="timed calls, median taken (default 5 CPU, 30 CUDA)")
    parser.add_argument("--base-width", type=int, default=32, help="expert base width")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is steadier on a busy CPU")
    parser.add_argument("--json", action="store_true", help="end with one machine-readable JSON line")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler tables of the share-0 expert and its match")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device} but torch.cuda.is_available() is False")
    def default(value: int | None, on_cpu: int, on_cuda: int) -> int:
        return value if value is not None else (on_cuda if cuda else on_cpu)

    config = BenchConfig(device=args.device, resolution=default(args.resolution, 32, 64),
                         batch=default(args.batch, 8, 128), dtype=args.dtype,
                         channels_last=args.channels_last, warmup=default(args.warmup, 2, 10),
                         iters=default(args.iters, 5, 30), base_width=args.base_width,
                         threads=args.threads if args.threads is not None else torch.get_num_threads())
    for name in ("batch", "iters", "base_width", "threads"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if config.warmup < 0:
        parser.error("--warmup must be >= 0")
    return config, args


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    torch.set_num_threads(config.threads)
    # both models get cuDNN's autotuned kernels (tuned during warmup)
    torch.backends.cudnn.benchmark = True
    name = device_name(config.device)
    load_before = os.getloadavg()
    print(f"# expert throughput on {name}: {config.resolution} px, batch {config.batch}, {config.dtype}"
          f"{', channels_last' if config.channels_last else ''}, warmup {config.warmup}, iters {config.iters}, "
          f"torch {torch.__version__}, load average {load_before[0]:.1f}")
    rows = run_benchmark(config)
    load_after = os.getloadavg()
    print()
    print(format_table(rows))
    print(f"\nMACs: {COUNTER_NAME}, batch 1, CPU fp32. Ratios: expert / the diffusers row below it. "
          f"DDIM-50 img/s = forward img/s / {DDIM_STEPS}. 1-min load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after ({os.cpu_count()} CPUs).")
    if args.profile:
        _profile(config)
    if args.json:
        import diffusers

        print(json.dumps({"benchmark": "expert_throughput", "device_name": name, "torch": torch.__version__,
                          "diffusers": diffusers.__version__, "config": dataclasses.asdict(config),
                          "mac_counter": COUNTER_NAME, "ddim_steps": DDIM_STEPS,
                          "load_average": [load_before[0], load_after[0]],
                          "rows": [r._asdict() for r in rows],
                          "ratios": [r._asdict() for r in ratios(rows)]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
