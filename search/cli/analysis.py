"""``memekit spectrum`` and ``memekit features``: spectral analysis of data and of expert features.

Thin commands over :func:`memekit.analysis.reports.run_spectrum` and
:func:`memekit.search.expert_features.run_feature_analysis`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memekit.analysis.data import SPLITS
from memekit.space.presets import DEFAULT_BASE
from memekit.space.spec import SCHEDULES
from memekit.space.trajectory import DEFAULT_MIN_STEPS, DEFAULT_SAMPLING_STEPS

from .args import positive_int, with_default


def _spectrum(args: argparse.Namespace) -> int:
    from memekit.analysis.reports import SpectrumJob, format_spectrum_summary, run_spectrum

    job = SpectrumJob(args.data, args.out, args.resolution, args.schedule, args.n_experts, args.min_length, args.base,
                      args.batch_size, args.limit, args.device, args.overwrite, args.equal_mass, split=args.split,
                      sampling_steps=args.sampling_steps, min_steps=args.min_steps)
    config = job.config()
    if args.dry_run:
        print(json.dumps(config, indent=2))
        return 0
    report, written = run_spectrum(job)
    print(format_spectrum_summary(report, args.data, per_channel=job.latent, min_length_rule=config["min_length_rule"]))
    print(f"wrote {Path(args.out)}/: {', '.join(written)}")
    return 0


def _features(args: argparse.Namespace) -> int:
    from memekit.analysis.reports import format_feature_summary
    from memekit.search.expert_features import FeatureJob, run_feature_analysis

    job = FeatureJob(args.model, args.data, args.out, args.expert, tuple(args.t) if args.t else None,
                     tuple(args.layers) if args.layers else None, args.resolution, args.limit, args.seed, args.device,
                     args.overwrite)
    if args.dry_run:
        print(json.dumps(job.plan()[1], indent=2))
        return 0
    report = run_feature_analysis(job)
    print(format_feature_summary(report.frame, report.layers))
    print(f"wrote {report.out}/: {', '.join(report.files)}")
    return 0


def _common(p: argparse.ArgumentParser, limit: int | None) -> None:
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--limit", type=positive_int, default=limit,
                   help=with_default("use only the first K images", limit or "all"))
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration as JSON and exit")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("spectrum", help="spectra of noisy inputs, crossover frequencies, prior spec",
                              description="Spectra of the noisy inputs x_t of images or of latents (a latent .npz "
                                          "made by memekit encode: per-channel spectra and crossovers as well), the "
                                          "crossover frequencies and the spectral prior spec they propose.")
    p.add_argument("data", metavar="DATA", help="image folder, .npz, builtin:shapes[:N], or a latent .npz")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help=with_default("image size in pixels", "32; latents: their own size, the only one "
                                                             "allowed"))
    p.add_argument("--split", choices=SPLITS, default="all", help="which images or latents to measure")
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help=with_default("beta schedule", "the base spec's"))
    p.add_argument("--n-experts", type=positive_int, default=4, help="number of intervals / experts")
    p.add_argument("--min-length", type=positive_int, default=None,
                   help=with_default("minimum interval length in steps", "derived: the shortest interval that "
                                     "holds --min-steps of the --sampling-steps DDIM steps wherever it lies"))
    p.add_argument("--sampling-steps", type=positive_int, default=DEFAULT_SAMPLING_STEPS,
                   help="DDIM steps of the sampling trajectory, as the study's --sampling-steps")
    p.add_argument("--min-steps", type=positive_int, default=DEFAULT_MIN_STEPS,
                   help="sampling steps every interval holds at least")
    p.add_argument("--equal-mass", action="store_true",
                   help="intervals of equal training mass under the paper's density instead of the spectral "
                        "segmentation (shares from the spectrum, p_n by the same floors)")
    p.add_argument("--base", default=DEFAULT_BASE, metavar="NAME|SPEC.json",
                   help="spec whose architecture and diffusion the prior reuses")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch of the spectrum pass")
    _common(p, limit=None)
    p.set_defaults(run=_spectrum)

    p = subparsers.add_parser("features", help="relative log amplitude of an expert's feature maps per t",
                              description="How an expert's feature maps respond to noise: the relative log "
                                          "amplitude of each block's features at several time-steps t, for a "
                                          "preset or spec (random init) or a trained run (EMA weights), written "
                                          "as a table and plots.")
    p.add_argument("model", metavar="MODEL_OR_PRESET",
                   help="preset name, spec JSON (random init), or a run folder / checkpoint (EMA weights)")
    p.add_argument("--data", required=True, help="image folder, .npz, or builtin:shapes[:N]")
    p.add_argument("--expert", type=int, default=0, help="index of the expert to analyse")
    p.add_argument("--t", type=int, nargs="+", default=None,
                   help=with_default("time-steps of x_t", "0, T/4, T/2, 3T/4, T-1"))
    p.add_argument("--layers", nargs="+", default=None, help=with_default("module names", "every U-Net block"))
    p.add_argument("--resolution", type=positive_int, default=None,
                   help=with_default("image size", "the spec's; presets: 32"))
    p.add_argument("--seed", type=int, default=0, help="seed of the random init and of the noise")
    _common(p, limit=16)
    p.set_defaults(run=_features)
