"""Score the spectral prior that the current code builds, with a finished study's own proxy.

A study caches its prior (``STUDY_DIR/prior_spec.json``) when it starts, so a change to
:mod:`memekit.analysis.priors` does not reach it. This rebuilds the prior from the study's data,
space and base exactly as ``memekit search`` does, projects it onto the space, trains it with the
study's proxy configuration (same data, seed, budget and validation set) and prints its
validation loss and trajectory cost beside the study's own warm starts::

    python benchmarks/prior_proxy.py runs/utk32b --out runs/utk32b_prior_octave
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna

from memekit.analysis.data import load_images
from memekit.analysis.priors import prior_spec
from memekit.search.results import load_study
from memekit.search.searchspace import params_for, projection_gap, suggest_spec
from memekit.search.train import train
from memekit.search.warmstart import prior_base
from memekit.space import spec_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir")
    parser.add_argument("--out", required=True, help="run folder of the proxy training (resumable)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    loaded = load_study(args.study_dir)
    space, config = loaded.space, loaded.config
    # as memekit.search.warmstart.make_prior
    images = load_images(config.data, space.base_expert.resolution, split="train", limit=2048, progress=False)
    prior = prior_spec(images, space.n_experts[0], prior_base(space), min_length=space.min_length)
    spec = suggest_spec(optuna.trial.FixedTrial(params_for(prior, space, prior)), space, prior)
    result = train(spec, config.proxy_config(args.device), Path(args.out), progress=True)
    print(json.dumps({"val_loss": result.val["val_loss"],
                      "trajectory_gmacs": spec_cost(spec, config.sampling_steps).trajectory_macs / 1e9,
                      "projection_gap": projection_gap(prior, spec), "intervals": spec.intervals,
                      "shares": [e.attention_share for e in spec.experts], "p": spec.soft_assignment}))
    for trial in loaded.study.trials:
        if trial.user_attrs.get("warm_start") and trial.values:
            print(f"study trial {trial.number} ({trial.user_attrs['warm_start']}): val_loss {trial.values[0]:.5f}")


if __name__ == "__main__":
    main()
