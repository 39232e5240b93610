"""Which part of the spectral prior moves a study's proxy: its p_n rule, its intervals, or its shares?

Trains, with a study's own proxy configuration and seeds 0..S-1 (like ``prior_proxy.py``), the
prior that the current code builds and three variants that each change one part of it:

    prior            the spectral prior (intervals, shares, p_n with the paper's fraction and
                     density as floors)
    density-p        the same intervals and shares, p_n from the paper's density alone (the
                     2026-11-30 rule: a short interval gets a small p_n)
    paper+shares     ``meme-paper``'s uniform intervals and p = (0.8, 0.4, 0.2, 0.1), the prior's
                     share rule evaluated on those intervals (the shares alone)
    equal-mass       intervals of equal mass under the paper's density (``--equal-mass``), shares
                     and p_n by the prior's rules on them

It prints validation loss and val_rel per variant as mean +- standard error over seeds; run
``prior_proxy.py`` on the same study for ``meme-paper`` and ``multi-same`` beside them::

    python benchmarks/prior_ablation.py runs/utk32w --seeds 3 --out runs/prior_ablation \\
        --json benchmarks/prior_ablation_utk32w.json
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import optuna
from prior_proxy import current_prior, scores

from memekit.analysis.data import load_images
from memekit.analysis.priors import (
    attention_share_proposal,
    interval_buried_fraction,
    propose_intervals,
)
from memekit.analysis.spectra import spectral_profile
from memekit.search.results import load_study
from memekit.space import Diffusion, MemeSpec, uniform_intervals
from memekit.space.assignment import (
    paper_density,
    paper_soft_assignment,
    paper_soft_assignment_for,
    soft_assignment_for,
)
from memekit.space.files import atomic_write_json


def variants(loaded) -> dict[str, MemeSpec]:
    prior = current_prior(loaded)
    config, expert = loaded.config, prior.experts[0]
    images = load_images(config.data, expert.resolution, split="train", limit=2048, progress=False)
    profile = spectral_profile(images, Diffusion(prior.diffusion).alpha_bar)
    T, n = prior.diffusion.timesteps, prior.n_experts

    def rebuilt(intervals, p) -> MemeSpec:
        """The prior's rules on other intervals (shares), with these p_n."""
        shares = attention_share_proposal(interval_buried_fraction(profile, intervals, expert.n_stages), expert)
        experts = tuple(dataclasses.replace(expert, attention_share=s) for s in shares)
        return dataclasses.replace(prior, experts=experts, intervals=intervals, soft_assignment=p)

    equal = propose_intervals(profile, n, loaded.space.min_length, equal_mass=True)
    return {"prior": prior,
            "density-p": dataclasses.replace(prior, soft_assignment=soft_assignment_for(prior.intervals,
                                                                                        paper_density(T, n))),
            "paper+shares": rebuilt(uniform_intervals(T, n), paper_soft_assignment(n)),
            "equal-mass": rebuilt(equal, paper_soft_assignment_for(equal))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir")
    parser.add_argument("--out", required=True, help="run folders of the proxy trainings (resumable)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default=None, help="comma-separated subset of the variants")
    parser.add_argument("--json", default=None, help="write every number here")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loaded = load_study(args.study_dir)
    results = {}
    for name, spec in variants(loaded).items():
        if args.only and name not in args.only.split(","):
            continue
        print(f"{name}: intervals {spec.intervals}, p {spec.soft_assignment}, shares "
              f"{[e.attention_share for e in spec.experts]}", flush=True)
        results[name] = scores(name, spec, loaded, args.seeds, Path(args.out), None, args.device) | {
            "spec": spec.to_dict()}
        summary = results[name]["summary"]
        print(f"  val loss {summary['val_loss']['mean']:.5f} +- {summary['val_loss']['se']:.5f}, val_rel "
              f"{summary['val_rel']['mean']:+.4f} +- {summary['val_rel']['se']:.4f}", flush=True)
    if args.json:
        atomic_write_json(args.json, {"study": str(args.study_dir), "seeds": args.seeds,
                                      "proxy_images": loaded.config.proxy_images, "results": results})


if __name__ == "__main__":
    main()
