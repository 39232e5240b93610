"""Load a ``memekit package`` folder with diffusers, sample, and compare with ``memekit sample``.

Meant to run in a fresh virtual environment that holds torch and diffusers (and, for the second
half, memekit), so it imports nothing of memekit at module level::

    python benchmarks/package_check.py try-load OUT            # every diffusers-only way to load OUT
    python benchmarks/package_check.py sample OUT --out DIR --n 16 --steps 50 --seed 0 [--how memekit|diffusers]
    python benchmarks/package_check.py compare DIR_A DIR_B --grid FILE.png

``sample --how memekit`` loads with ``memekit.search.pipeline.MemePipeline.from_pretrained(OUT)`` (the
card's documented way); ``--how diffusers`` with ``diffusers.DiffusionPipeline.from_pretrained(OUT,
trust_remote_code=True)`` (needs a ``pipeline.py`` in OUT). ``compare`` prints the max abs pixel
difference of same-named PNGs and writes both 4x4 grids side by side. Results:
``benchmarks/package_utk32/README.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def try_load(out: str) -> int:
    """Try each diffusers-only way of loading ``out``; print what each does. Returns how many worked."""
    from diffusers import DiffusionPipeline

    ways = {
        "DiffusionPipeline.from_pretrained(OUT)": {},
        "DiffusionPipeline.from_pretrained(OUT, trust_remote_code=True)": {"trust_remote_code": True},
        "DiffusionPipeline.from_pretrained(OUT, custom_pipeline=OUT, trust_remote_code=True)":
            {"custom_pipeline": out, "trust_remote_code": True},
    }
    worked = 0
    for name, kwargs in ways.items():
        try:
            pipe = DiffusionPipeline.from_pretrained(out, **kwargs)
            print(f"OK   {name}: {type(pipe).__module__}.{type(pipe).__name__}")
            worked += 1
        except Exception as err:  # noqa: BLE001 - the point is to print every failure
            last = traceback.format_exception_only(type(err), err)[-1].strip()
            print(f"FAIL {name}: {last[:300]}")
    return worked


def sample(out: str, dest: str, n: int, steps: int, seed: int, how: str) -> None:
    """Sample ``n`` images at ``seed`` with ``steps`` DDIM steps; save ``dest/000000.png`` ..."""
    import torch

    if how == "memekit":
        from memekit.search.pipeline import MemePipeline

        load = MemePipeline.from_pretrained
    else:
        from diffusers import DiffusionPipeline

        def load(path: str):  # type: ignore[no-untyped-def]
            return DiffusionPipeline.from_pretrained(path, trust_remote_code=True)

    t0 = time.perf_counter()
    pipe = load(out)
    t1 = time.perf_counter()
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=n, num_inference_steps=steps, seed=seed).images
    t2 = time.perf_counter()
    Path(dest).mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(Path(dest) / f"{i:06d}.png")
    print(json.dumps({"pipeline": f"{type(pipe).__module__}.{type(pipe).__name__}", "load_s": round(t1 - t0, 2),
                      "sample_s": round(t2 - t1, 2), "images": len(images), "steps": steps, "seed": seed,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "python": platform.python_version()}))


def _grid(paths: list[Path], cols: int = 4) -> np.ndarray:
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    h, w, _ = images[0].shape
    rows = -(-len(images) // cols)
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, a in enumerate(images):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = a
    return grid


def compare(a: str, b: str, grid: str, labels: tuple[str, str], scale: int = 2) -> None:
    """Max abs pixel difference of same-named PNGs in ``a`` and ``b``; both grids side by side in ``grid``."""
    names = sorted(p.name for p in Path(a).glob("*.png"))
    if names != sorted(p.name for p in Path(b).glob("*.png")) or not names:
        raise SystemExit(f"{a} and {b} do not hold the same PNG names")
    diffs = [np.abs(np.asarray(Image.open(Path(a) / n), np.int16) - np.asarray(Image.open(Path(b) / n), np.int16))
             for n in names]
    print(json.dumps({"images": len(names), "max_abs_diff_uint8": int(max(d.max() for d in diffs)),
                      "identical_images": sum(int(d.max() == 0) for d in diffs)}))
    ga, gb = (Image.fromarray(g).resize((g.shape[1] * scale, g.shape[0] * scale), Image.NEAREST)
              for g in (_grid([Path(a) / n for n in names]), _grid([Path(b) / n for n in names])))
    gap, top = 12, 24
    canvas = Image.new("RGB", (2 * ga.width + gap, ga.height + top), "white")
    canvas.paste(ga, (0, top))
    canvas.paste(gb, (ga.width + gap, top))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    draw.text((2, 3), labels[0], fill="black", font=font)
    draw.text((ga.width + gap + 2, 3), labels[1], fill="black", font=font)
    canvas.save(grid, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("try-load")
    p.add_argument("out")
    p = sub.add_parser("sample")
    p.add_argument("out")
    p.add_argument("--out", dest="dest", required=True)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--how", choices=("memekit", "diffusers"), default="memekit")
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--grid", required=True)
    p.add_argument("--labels", nargs=2, default=("A", "B"))
    args = parser.parse_args()
    if args.command == "try-load":
        try_load(args.out)
    elif args.command == "sample":
        sample(args.out, args.dest, args.n, args.steps, args.seed, args.how)
    else:
        compare(args.a, args.b, args.grid, tuple(args.labels))


if __name__ == "__main__":
    main()
