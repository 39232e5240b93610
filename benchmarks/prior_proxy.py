"""Score the spectral prior that the current code builds beside a study's other warm starts, over
seeds, with the study's own proxy.

A study caches its prior (``STUDY_DIR/prior_spec.json``) when it starts, so a change to
:mod:`memekit.analysis.priors` does not reach it. This rebuilds the prior from the study's data,
space and base exactly as ``memekit search`` does, projects it onto the space and trains it, and
each warm start the study enqueued (``meme-paper``, ``multi-same``, ...), with the study's proxy
configuration (same data, budget and validation set) for seeds 0..S-1; a warm start's seed
``config.seed`` is the study's own trial. It prints each configuration's validation figures as
mean +- standard error over seeds and the difference of the prior against each warm start with
its standard error (sqrt(SE_a^2 + SE_b^2)) and whether it exceeds two of them, on the study's objective
and on the other validation figure::

    python benchmarks/prior_proxy.py runs/utk32w --seeds 3 --out runs/utk32w_prior \
        --json benchmarks/prior_proxy_utk32w.json
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import optuna

from memekit.analysis.data import load_images
from memekit.analysis.priors import prior_spec
from memekit.analysis.stats import mean_se
from memekit.search.results import load_study
from memekit.search.searchspace import params_for, projection_gap, suggest_spec
from memekit.search.train import train
from memekit.search.warmstart import prior_base
from memekit.space import MemeSpec, spec_cost
from memekit.space.files import atomic_write_json

KEYS = ("val_loss", "val_rel")


def current_prior(loaded) -> MemeSpec:
    """The prior as :func:`memekit.search.warmstart.make_prior` builds it now, projected onto the space."""
    space, config = loaded.space, loaded.config
    images = load_images(config.data, space.base_expert.resolution, split="train", limit=2048, progress=False)
    prior = prior_spec(images, space.n_experts[0], prior_base(space), min_length=space.min_length)
    spec = suggest_spec(optuna.trial.FixedTrial(params_for(prior, space, prior)), space, prior)
    print(f"prior: intervals {spec.intervals}, p {spec.soft_assignment}, shares "
          f"{[e.attention_share for e in spec.experts]}, projection gap {projection_gap(prior, spec)}")
    return spec


def scores(name: str, spec: MemeSpec, loaded, seeds: int, out: Path, own: dict | None, device: str | None) -> dict:
    """Validation figures per seed (the study's own trial stands for seed ``config.seed``)."""
    config = loaded.config.proxy_config(device)
    per_seed = {}
    for seed in range(config.seed, config.seed + seeds):
        if own is not None and seed == config.seed:
            per_seed[seed] = {k: own[k] for k in KEYS if k in own}
            continue
        result = train(spec, dataclasses.replace(config, seed=seed), out / f"{name}-seed{seed}", progress=False)
        per_seed[seed] = {k: result.val[k] for k in (*KEYS, "val_loss_quarters") if k in result.val}
        print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.5f}" for k, v in per_seed[seed].items() if k in KEYS),
              flush=True)
    summary = {}
    for key in KEYS:
        values = [s[key] for s in per_seed.values() if key in s]
        if len(values) == len(per_seed):
            e = mean_se(values)
            summary[key] = {"mean": e.mean, "se": e.se, "values": values}
    return {"per_seed": per_seed, "summary": summary,
            "trajectory_gmacs": spec_cost(spec, loaded.config.sampling_steps).trajectory_macs / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir")
    parser.add_argument("--out", required=True, help="run folders of the proxy trainings (resumable)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", default=None, help="write every number here")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = load_study(args.study_dir)
    out = Path(args.out)
    results = {"prior (current code)": scores("prior", current_prior(loaded), loaded, args.seeds, out, None,
                                              args.device)}
    for trial in loaded.study.trials:
        name = trial.user_attrs.get("warm_start")
        if name and name != "prior" and trial.values:
            spec = MemeSpec.from_json(trial.user_attrs["spec"])
            results[name] = scores(name, spec, loaded, args.seeds, out, trial.user_attrs, args.device)
    quality = "val_rel" if loaded.quality_name == "val_rel" else "val_loss"
    for key in sorted(KEYS, key=lambda k: k != quality):  # the study's own objective first
        prior = results["prior (current code)"]["summary"][key]
        print(f"\n{key} over {args.seeds} seeds (mean +- SE), proxy {loaded.config.proxy_images:,} images:")
        for name, r in results.items():
            s = r["summary"][key]
            line = f"  {name:<22} {s['mean']:+.5f} +- {s['se']:.5f}  ({r['trajectory_gmacs']:.3f} GMACs)"
            if not name.startswith("prior"):
                diff, se = prior["mean"] - s["mean"], math.hypot(prior["se"], s["se"])
                verdict = "beyond" if abs(diff) > 2 * se else "within"
                line += f"; prior - {name} = {diff:+.5f} +- {se:.5f} ({verdict} 2 SE)"
            print(line)
    if args.json:
        atomic_write_json(args.json, {"study": str(args.study_dir), "seeds": args.seeds, "quality": quality,
                                      "proxy_images": loaded.config.proxy_images, "results": results})


if __name__ == "__main__":
    main()
