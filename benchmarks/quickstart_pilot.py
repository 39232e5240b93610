"""What moves the quickstart's samples toward its data? One variant of the quickstart's final training
per call: train, draw 100 samples, measure the resemblance statistics, and the denoiser's x0 error on
held-out images at a few t (the last sampling step sees t = 20).

    python benchmarks/quickstart_pilot.py OUT/attn --spec qs/3-export/trial-00006.json \\
        --variant '{"attention_share": [[1.0, 0.5], [0.0, 1.0]]}'
    python benchmarks/quickstart_pilot.py OUT/edm --spec SPEC --variant '{"precond": "edm"}'
    python benchmarks/quickstart_pilot.py OUT/b8 --spec SPEC --variant '{"train": {"batch": 8, "lr": 2e-3}}'
    python benchmarks/quickstart_pilot.py OUT/x2 --spec SPEC --variant '{"train": {"images": 81920}}'  # continues
    python benchmarks/quickstart_pilot.py OUT/one --spec SPEC --variant '{"data": "one.npz"}' --etas 0 1 --steps 25
    python benchmarks/quickstart_pilot.py OUT/tp --spec SPEC --threads 2 --throughput 32 64 128 256  # img/s only

``--variant`` keys: per-expert ExpertSpec fields (one value for all experts, or a list of one value per
expert), ``precond`` (a preconditioning measured from the data), ``data`` (default the quickstart's),
``train`` (TrainConfig fields over the quickstart's final training). A folder that holds a run continues
it (a larger ``images`` extends it). Prints one JSON line per (eta, steps) and one line per t.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from memekit.analysis.data import load_images
from memekit.search.compare import train_rate
from memekit.search.quickstart import (
    QuickstartConfig,
    distinct_colours,
    neighbour_equal_fraction,
    resemblance,
    train_config_of,
)
from memekit.search.sampling import load_model, sample_checkpoint, save_comparison_grid
from memekit.search.train import Trainer, train, with_preconditioning
from memekit.space import MemeSpec
from memekit.space.diffusion import Diffusion

EXPERT_KEYS = ("channel_mult", "blocks_per_stage", "attention_share", "attention_pool", "base_width")


def variant_spec(spec: MemeSpec, variant: dict, data: str) -> MemeSpec:
    d = spec.to_dict()
    for key in EXPERT_KEYS:
        if key in variant:
            value = variant[key]
            per_expert = isinstance(value, list) and isinstance(value[0], list)
            for i, expert in enumerate(d["experts"]):
                expert[key] = value[i] if per_expert else value
    spec = MemeSpec.from_dict(d)
    return with_preconditioning(spec, variant["precond"], data) if "precond" in variant else spec


def x0_errors(run: Path, data: str, ts: tuple[int, ...] = (5, 20, 50, 100)) -> list[dict]:
    """RMS x0 error (uint8 levels) of the EMA model on 100 held-out images noised to each t, and the
    resemblance statistics of its x0 predictions."""
    model, spec, _ = load_model(run)
    diffusion = Diffusion(spec.diffusion)
    side = spec.experts[0].resolution
    x = torch.tensor(load_images(data, side, split="reference", limit=100, progress=False))
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    rows = []
    for t in ts:
        tt = torch.full((len(x),), t)
        xt = diffusion.q_sample(x, tt, torch.randn(x.shape, generator=g))
        with torch.no_grad():
            x0, _ = diffusion.split_prediction(diffusion.predict(model, xt, tt), xt, tt)
        x0 = x0.clamp(-1, 1)
        images = ((x0 + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        rows.append({"t": t, "sigma_levels": round(diffusion.coefficients(tt)[1].flatten()[0].item() * 127.5, 1),
                     "x0_rms_levels": round(((x0 - x) ** 2).mean().sqrt().item() * 127.5, 1),
                     "equal": round(neighbour_equal_fraction(images), 3),
                     "colours": round(distinct_colours(images), 1)})
    return rows


def batch_rate(spec: MemeSpec, config, batch: int, out: Path, steps: int = 15) -> float:
    """Training img/s of ``spec`` at ``batch`` (``steps`` steps after 3 warm-up steps, data in memory)."""
    trainer = Trainer(spec, dataclasses.replace(config, batch=batch, images=batch * (steps + 3)),
                      out / f"throughput-b{batch}", progress=False)
    trainer.load_data()
    return train_rate(trainer, steps, warmup=3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="run folder (an existing run continues)")
    p.add_argument("--spec", required=True, help="the quickstart's chosen spec (OUT/3-export/trial-*.json)")
    p.add_argument("--variant", default="{}", help="JSON: what differs from the quickstart (module docstring)")
    p.add_argument("--etas", type=float, nargs="+", default=[1.0])
    p.add_argument("--steps", type=int, nargs="+", default=[50])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a core stays free)")
    p.add_argument("--throughput", type=int, nargs="+", metavar="BATCH",
                   help="only time training at these batch sizes (15 steps after 3 warm-up steps) and exit")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variant = json.loads(args.variant)
    config = QuickstartConfig(**({"data": variant["data"]} if "data" in variant else {}))
    spec = variant_spec(MemeSpec.from_json(Path(args.spec).read_text()), variant, config.data)
    train_config = dataclasses.replace(train_config_of(config), **variant.get("train", {}))
    if args.throughput:
        for batch in args.throughput:
            print(json.dumps({"batch": batch, "threads": args.threads,
                              "train_img_s": round(batch_rate(spec, train_config, batch, args.out), 1)}), flush=True)
        return 0
    start = time.time()
    result = train(spec, train_config, args.out, progress=False, say=print)
    seconds = time.time() - start
    real = load_images(config.data, spec.experts[0].resolution, split="train", limit=100, progress=False)
    for eta in args.etas:
        for steps in args.steps:
            npz = args.out / f"samples-eta{eta:g}-steps{steps}.npz"
            if not npz.is_file():
                sample_checkpoint(args.out, npz, n=100, steps=steps, eta=eta, seed=0, batch=100, progress=False)
            with np.load(npz) as f:
                samples = f["images"]
            save_comparison_grid(samples[:36], real[:36], npz.with_suffix(".png"), scale=4)
            print(json.dumps({"out": str(args.out), "eta": eta, "steps": steps, "train_s": round(seconds),
                              "images": result.images_seen, "val_loss": result.val.get("val_loss"),
                              **resemblance(samples, real)}), flush=True)
    for row in x0_errors(args.out, config.data):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
