"""Preconditioning none / edm / wiener on one spec: validation loss per quarter of [0, T), untrained
and after a fixed budget (same spec, same seed, same data, same proxy settings).

    python benchmarks/preconditioning.py --data ../shared/data/utkface/crop_part1 \
        --spec benchmarks/utk32b_study/trial-00014.json --images 4096 --out runs/precond

Prints one table (val loss per quarter, val_rel per quarter against the data's Wiener filter, the
mean over the 16-t grid) and writes ``OUT/results.json``; a finished mode is not retrained (its
run folder resumes), so the script can be rerun after an interruption.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from memekit.analysis.data import load_images
from memekit.analysis.linear import STATS_IMAGES, preconditioned
from memekit.search.train import TrainConfig, Trainer, train
from memekit.space import load_spec

MODES = ("none", "edm", "wiener")


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", required=True, help="run folders and results.json")
    args = p.parse_args()
    base = load_spec(args.spec)
    images = load_images(args.data, base.experts[0].resolution, split="train", limit=STATS_IMAGES, progress=False)
    config = TrainConfig(data=args.data, images=args.images, batch=args.batch, lr=args.lr,
                         warmup_images=args.warmup_images, seed=args.seed, val_images=args.val_images, val_every=0,
                         sample_every=0, sample_count=16, sample_steps=25, checkpoint_every=0, keep_last=1,
                         device="cpu")
    out = Path(args.out)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for mode in args.modes.split(","):
        spec = dataclasses.replace(base, diffusion=preconditioned(base.diffusion, mode, images))
        if mode not in results:
            before = untrained(spec, config, out / f"{mode}-untrained")
            after = train(spec, config, out / mode, progress=False)
            results[mode] = {"untrained": before, "trained": after.val, "images": args.images,
                             "train_images_per_s": after.train_images_per_s}
            out.mkdir(parents=True, exist_ok=True)
            tmp = results_file.with_name(".results.json.tmp")
            tmp.write_text(json.dumps(results, indent=1) + "\n")
            tmp.replace(results_file)
    print(f"spec {args.spec}, data {args.data}, seed {args.seed}; val loss (eps-MSE) per quarter of [0, T) "
          f"on {args.val_images} reference images; val_rel = mean log(loss / Wiener filter's loss)")
    print("| mode | budget | val loss | q1 | q2 | q3 | q4 | val_rel | rel q1 | rel q2 | rel q3 | rel q4 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        for when, label in (("untrained", "0"), ("trained", f"{r['images']:,}")):
            v = r[when]
            cells = [f"{v['val_loss']:.4f}", *(f"{q:.4f}" for q in v["val_loss_quarters"]), f"{v['val_rel']:+.3f}",
                     *(f"{q:+.3f}" for q in v["val_rel_quarters"])]
            print(f"| {mode} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
