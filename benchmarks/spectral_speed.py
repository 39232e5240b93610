"""Speed of the analytic noisy-spectrum path vs Monte-Carlo noising vs a bare FFT pass.

All three see the same images (uint8 -> [-1, 1] float32 on the device, in batches):

- bare FFT:    ``rfft2(x, norm="ortho")`` of every batch, nothing else (the floor of any pass);
- analytic:    ``spectral_profile`` (one pass: power summed over images/channels, binned once),
               then ``E P_t(f)``, ``SNR(t, f)`` and ``f_c(t)`` for all T steps in closed form;
- Monte-Carlo: ``monte_carlo_noisy_spectrum`` at all T steps, one noise draw per image and step.

Goals (issue 3): analytic >= 100x faster than Monte-Carlo at T = 1000, and within 1.5x of one bare
FFT pass. Times are the minimum over ``--repeats`` runs (Monte-Carlo: one run), after one warm-up.

    python benchmarks/spectral_speed.py [DATA] --resolution 64 --limit 512
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from memekit.analysis.data import load_images, to_model_range
from memekit.analysis.spectra import monte_carlo_noisy_spectrum, spectral_profile
from memekit.space import beta_schedule

# ../shared/data/utkface/crop_part1 relative to the repository root
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface" / "crop_part1"


def _timed(fn: Callable[[], object], device: str, repeats: int) -> tuple[float, object]:
    """Minimum wall time over ``repeats`` calls of ``fn`` (after one warm-up), and its last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def bare_fft_pass(images: np.ndarray, batch_size: int, device: str) -> None:
    for start in range(0, len(images), batch_size):
        torch.fft.rfft2(to_model_range(images[start:start + batch_size]).to(device), norm="ortho")


def analytic_all_t(images: np.ndarray, alpha_bar: np.ndarray, batch_size: int, device: str):
    profile = spectral_profile(images, alpha_bar, batch_size=batch_size, device=device)
    f_c, _ = profile.crossover()
    return profile.expected_power, profile.snr, f_c


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_device(images: np.ndarray, alpha_bar: np.ndarray, device: str, args: argparse.Namespace) -> list[dict]:
    bare_s, _ = _timed(lambda: bare_fft_pass(images, args.batch_size, device), device, args.repeats)
    analytic_s, (expected, _, _) = _timed(lambda: analytic_all_t(images, alpha_bar, args.batch_size, device),
                                          device, args.repeats)
    start = time.perf_counter()
    mc = monte_carlo_noisy_spectrum(images, alpha_bar, batch_size=args.mc_batch_size, device=device,
                                    progress=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    mc_s = time.perf_counter() - start
    deviation = float(np.abs(mc / expected - 1).max())
    return [
        {"device": device, "path": "bare FFT pass", "seconds": bare_s, "note": "rfft2 of every batch"},
        {"device": device, "path": "analytic, all T", "seconds": analytic_s, "note": "one pass + closed form"},
        {"device": device, "path": "Monte-Carlo, all T", "seconds": mc_s,
         "note": f"max |MC/analytic - 1| = {deviation:.3f}"},
    ]


def format_table(rows: list[dict]) -> str:
    """Markdown table: seconds, time relative to the bare FFT pass, Monte-Carlo time over this path's."""
    lines = ["| device | path | seconds | time / bare FFT pass | Monte-Carlo time / this | note |",
             "|---|---|---|---|---|---|"]
    for device in dict.fromkeys(r["device"] for r in rows):
        bare, analytic, mc = (r for r in rows if r["device"] == device)
        for r in (bare, analytic, mc):
            lines.append(f"| {device} | {r['path']} | {r['seconds']:.3f} | {r['seconds'] / bare['seconds']:.2f}x | "
                         f"{mc['seconds'] / r['seconds']:,.0f}x | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(DEFAULT_DATA), help="image folder, .npz or builtin:shapes:N")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--limit", type=int, default=512, help="images used (keeps Monte-Carlo feasible on CPU)")
    parser.add_argument("--schedule", default="linear-ldm")
    parser.add_argument("--timesteps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--mc-batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    args = parser.parse_args()

    images = load_images(args.data, args.resolution, limit=args.limit)
    alpha_bar = np.cumprod(1.0 - beta_schedule(args.schedule, args.timesteps))
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        rows += run_device(images, alpha_bar, device, args)
    print(f"data {args.data}: {len(images)} images at {args.resolution} px, {args.schedule}, T = {args.timesteps}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CPU {cpu_name()}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(format_table(rows))
    for device in devices:
        bare, analytic, mc = (r["seconds"] for r in rows if r["device"] == device)
        print(f"{device}: analytic is {mc / analytic:,.0f}x faster than Monte-Carlo (goal >= 100x) and "
              f"{analytic / bare:.2f}x one bare FFT pass (goal <= 1.5x)")


if __name__ == "__main__":
    main()
