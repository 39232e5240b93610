"""Can the FID Inception weights travel to a GPU machine as fp16? (issue 12, item 7)

A device call carries at most 64 MiB; pytorch-fid's weights (fp32) are about 91 MB. Stored as
fp16 they halve; memekit loads them into the fp32 network unchanged (``load_state_dict`` copies
with a cast), so only the rounding of the stored weights differs. This writes the fp16 copy
(``--out``), then computes FID and KID of the same image set against the same reference with
both files, and prints the differences (the check: |delta FID| < 0.1)::

    python benchmarks/inception_fp16.py --images runs/some/samples.npz \
        --reference data:../shared/data/utkface/crop_part1 \
        --resolution 32 --out data-gpu/inception-fp16.pth
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from memekit.analysis.fid import features, frechet_distance
from memekit.analysis.inception import resolve_inception_weights
from memekit.analysis.kid import kid
from memekit.space.files import atomic_write


def write_half(source: Path, out: Path) -> Path:
    """The state dict of ``source`` with every floating tensor stored as fp16."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    return atomic_write(out, lambda f: torch.save(half, f))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help="an image set as memekit fid takes it (samples)")
    p.add_argument("--reference", required=True, help="the reference set (e.g. data:FOLDER)")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--split", default="reference")
    p.add_argument("--out", required=True, help="where to write the fp16 weights")
    args = p.parse_args()
    fp32 = resolve_inception_weights()
    half = write_half(fp32.path, Path(args.out))
    loader = {"resolution": args.resolution, "split": args.split}
    numbers = {}
    for label, weights in (("fp32", str(fp32.path)), ("fp16", str(half))):
        start = time.perf_counter()
        a = features(args.images, weights=weights)
        b = features(args.reference, weights=weights, **loader)
        numbers[label] = {"fid": frechet_distance(a.statistics.mu, a.statistics.sigma, b.statistics.mu,
                                                  b.statistics.sigma),
                          "kid": kid(a, b)[0], "seconds": time.perf_counter() - start}
    size = {k: Path(v).stat().st_size / 2**20 for k, v in (("fp32", fp32.path), ("fp16", half))}
    delta = numbers["fp16"]["fid"] - numbers["fp32"]["fid"]
    print(json.dumps({"weights": fp32.label, "size_mib": size, **numbers, "delta_fid": delta,
                      "delta_kid": numbers["fp16"]["kid"] - numbers["fp32"]["kid"],
                      "check_abs_delta_fid_below_0.1": abs(delta) < 0.1}, indent=2))


if __name__ == "__main__":
    main()
