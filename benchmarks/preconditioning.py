"""Preconditioning none / edm / wiener / colour on one spec: validation loss per quarter of [0, T),
untrained and after a fixed budget (same spec, same seeds, same data, same proxy settings).

    python benchmarks/preconditioning.py --data ../shared/data/utkface/crop_part1 \
        --spec benchmarks/utk32b_study/trial-00014.json --images 4096 --out runs/precond

Prints one table (val loss per quarter, and val_rel against BOTH references, the per-channel Wiener
filter and the colour filter, so every mode is read on the same two scales) and writes
``OUT/results.json``; a finished (mode, seed) is not retrained, so the script can be rerun after an
interruption. ``--seeds K`` trains every mode with seeds 0..K-1 (mean +- SE over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from memekit.analysis.data import load_images
from memekit.analysis.linear import STATS_IMAGES, preconditioned
from memekit.search.train import TrainConfig, Trainer, train
from memekit.space import load_spec

MODES = ("none", "edm", "wiener", "colour")


def untrained(spec, config: TrainConfig, run_dir: Path) -> dict:
    trainer = Trainer(spec, config, run_dir, progress=False)
    trainer.load_data()
    return trainer.validate()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="training images (folder, .npz or builtin:shapes)")
    p.add_argument("--spec", required=True, help="spec JSON (its preconditioning is replaced)")
    p.add_argument("--images", type=int, default=4096, help="training budget per mode")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=256)
    p.add_argument("--seeds", type=int, default=1, help="training seeds 0..K-1 per mode")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", required=True, help="run folders and results.json")
    args = p.parse_args()
    base = load_spec(args.spec)
    images = load_images(args.data, base.experts[0].resolution, split="train", limit=STATS_IMAGES, progress=False)
    config = TrainConfig(data=args.data, images=args.images, batch=args.batch, lr=args.lr,
                         warmup_images=args.warmup_images, seed=0, val_images=args.val_images, val_every=0,
                         sample_every=0, sample_count=16, sample_steps=25, checkpoint_every=0, keep_last=1,
                         device="cpu")
    out = Path(args.out)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for mode in args.modes.split(","):
        spec = dataclasses.replace(base, diffusion=preconditioned(base.diffusion, mode, images))
        for seed in range(args.seeds):
            key = mode if seed == 0 else f"{mode}/seed-{seed}"
            if key in results:
                continue
            seeded = dataclasses.replace(config, seed=seed)
            before = untrained(spec, seeded, out / f"{key}-untrained") if seed == 0 else None
            after = train(spec, seeded, out / key, progress=False)
            results[key] = {"untrained": before, "trained": after.val, "images": args.images, "seed": seed,
                            "train_images_per_s": after.train_images_per_s}
            out.mkdir(parents=True, exist_ok=True)
            tmp = results_file.with_name(".results.json.tmp")
            tmp.write_text(json.dumps(results, indent=1) + "\n")
            tmp.replace(results_file)
    print("\n".join(table(results, references(args.data, base, images))))


def references(data: str, base, images) -> dict[str, np.ndarray]:
    """The per-t loss of the per-channel Wiener filter and of the colour filter (both measured on the
    training images, applied to the reference split): the two scales every mode's val_rel is read on."""
    from memekit.search.validation import linear_reference
    from memekit.space import Diffusion

    val = load_images(data, base.experts[0].resolution, split="reference", limit=256, progress=False)
    return {mode: linear_reference(Diffusion(preconditioned(base.diffusion, mode, images)), images, val)
            for mode in ("wiener", "colour")}


def table(results: dict, refs: dict[str, np.ndarray]) -> list[str]:
    from memekit.analysis.stats import mean_se

    lines = ["| mode | budget | seeds | val loss | q1 | q2 | q3 | q4 | val_rel vs per-channel | val_rel vs colour |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    modes = dict.fromkeys(k.split("/")[0] for k in results)
    for mode in modes:
        runs = [r for k, r in results.items() if k.split("/")[0] == mode]
        for when in ("untrained", "trained"):
            vals = [r[when] for r in runs if r[when] is not None]
            loss = mean_se([v["val_loss"] for v in vals])
            quarters = [mean_se([v["val_loss_quarters"][q] for v in vals]).mean for q in range(4)]
            rel = {m: mean_se([float(np.mean(np.log(np.array(v["val_loss_per_t"]) / refs[m][v["val_timesteps"]])))
                               for v in vals]) for m in refs}
            se = "" if loss.n < 2 else f" +- {loss.se:.5f}"
            rels = " | ".join(f"{rel[m].mean:+.3f}" + ("" if rel[m].n < 2 else f" +- {rel[m].se:.3f}") for m in refs)
            lines.append(f"| {mode} | {'0' if when == 'untrained' else format(runs[0]['images'], ',')} | {loss.n} | "
                         f"{loss.mean:.5f}{se} | " + " | ".join(f"{q:.4f}" for q in quarters) + f" | {rels} |")
    return lines


if __name__ == "__main__":
    main()
