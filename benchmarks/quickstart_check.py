"""Do a quickstart's samples look like its data? The resemblance table of ``memekit quickstart``,
recomputed from its files, or for any samples against any data source.

    python benchmarks/quickstart_check.py out/quickstart                      # the run's samples and data
    python benchmarks/quickstart_check.py out/quickstart --kid 100            # and KID on 100 samples
    python benchmarks/quickstart_check.py --samples S.npz --data builtin:shapes:2048   # e.g. an older run
    python benchmarks/quickstart_check.py out/quickstart --grid benchmarks/quickstart_samples.png

Prints the two pixel statistics (neighbouring pixels nearly equal; distinct colours per image) of
the samples and of as many training images with the quickstart's declared targets, KID against the
held-out split when asked, and the wall time and load from OUT/timing.json. ``--grid`` copies the
run's sample grid (samples beside training images), the picture the README shows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from memekit.analysis.data import load_images
from memekit.search.quickstart import (
    COLOUR_LEVELS,
    EQUAL_TOLERANCE,
    QuickstartConfig,
    kid_against_reference,
    resemblance,
    resemblance_table,
    resemblance_verdict,
    timing_sentence,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", help="a quickstart folder (its 5-samples.npz, search_space.json, timing.json)")
    p.add_argument("--samples", help="an .npz of uint8 samples (default: OUT/5-samples.npz)")
    p.add_argument("--data", help="the data source (default: the quickstart's, QuickstartConfig.data)")
    p.add_argument("--kid", type=int, default=0, help="KID on this many samples (default 0: none)")
    p.add_argument("--grid", help="copy OUT/5-samples.png here")
    args = p.parse_args(argv)
    if args.out is None and args.samples is None:
        p.error("give a quickstart folder OUT or --samples")
    samples_path = Path(args.samples or Path(args.out) / "5-samples.npz")
    with np.load(samples_path) as f:
        samples = f["images"]
    config = QuickstartConfig(data=args.data or QuickstartConfig.data)
    training = load_images(config.data, samples.shape[1], split="train", limit=len(samples), progress=False)
    numbers = {**resemblance(samples, training), "n": len(samples), "tolerance": EQUAL_TOLERANCE,
               "colour_levels": COLOUR_LEVELS}
    if args.kid:
        numbers["kid"] = kid_against_reference(samples[: args.kid], config)
    print(f"{len(samples)} samples of {samples_path} against as many training images of {config.data}\n")
    print(resemblance_table(numbers))
    print(f"\n{resemblance_verdict(numbers)}")
    if args.out is not None and (Path(args.out) / "timing.json").is_file():
        print(f"\n{timing_sentence(Path(args.out))}")
    if args.grid:
        shutil.copyfile(Path(args.out) / "5-samples.png", args.grid)
        print(f"\ngrid copied to {args.grid}")
    json.dump(numbers, sys.stderr, default=float)
    print(file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
