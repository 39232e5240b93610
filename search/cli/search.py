"""``memekit search``: run (or resume, or join) an Optuna study over the MEME design space."""

from __future__ import annotations

import argparse
import json
import os

from memekit.analysis.device import MIXED_PRECISION
from memekit.search.quickstart import QuickstartConfig, run_quickstart
from memekit.search.searchspace import SPACE_PRESETS, load_search_space
from memekit.search.storage import redact_url
from memekit.search.study import (
    COSTS,
    OBJECTIVES,
    OPTUNA_SAMPLERS,
    PRUNERS,
    QUALITIES,
    STORAGE_ENV,
    SearchConfig,
)
from memekit.search.warmstart import WARM_STARTS
from memekit.search.workers import count_trials, run_search
from memekit.space.precondition import PRECONDITIONINGS

from .args import nonneg_int, positive_int


def _gpus(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1,2, got {text!r}")
    return parts


def _warm(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in WARM_STARTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown warm start {bad[0]!r}: choose from {', '.join(WARM_STARTS)}")
    return parts


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    return SearchConfig(
        study_dir=args.study_dir, study_name=args.study_name, storage=args.storage, space=args.space,
        resolution=args.resolution, data=args.data, n_trials=args.trials, objective=args.objective,
        quality=args.quality, preconditioning=args.preconditioning, cost=args.cost, sampler=args.sampler, pruner=args.pruner, max_macs=args.max_macs,
        max_params=args.max_params, sampling_steps=args.sampling_steps, proxy_images=args.proxy_images,
        proxy_batch=args.proxy_batch, proxy_lr=args.proxy_lr, val_images=args.val_images, val_every=args.val_every,
        fid_n=args.fid_n, fid_steps=args.fid_steps, seed=args.seed, workers=args.workers, gpus=args.gpus,
        machine_rank=args.machine_rank, warm_start=args.warm_start, max_retries=args.max_retries,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period, device=args.device,
        mixed_precision=args.mixed_precision, keep_proxy_checkpoints=args.keep_proxy_checkpoints)


def _search(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.dry_run:
        space = load_search_space(config.space, config.resolution)
        print(json.dumps({"config": config.public_dict(), "space": space.to_dict(),
                          "proxy": config.proxy_config().to_dict()}, indent=2))
        return 0
    where = redact_url(config.storage) if config.storage else f"{config.study_dir}/study.journal"
    print(f"study {config.study_name!r} in {where}: {config.n_trials} trials, {config.workers} worker(s), "
          f"objective {config.objective} ({', '.join(config.metric_names())}), sampler {config.sampler}")
    study = run_search(config, progress=not args.quiet)
    finished, running = count_trials(study)
    print(f"done: {finished} finished trials ({running} still running elsewhere); "
          f"export with: memekit export {config.study_dir} --out {config.study_dir}/export")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    d = SearchConfig(study_dir="")
    p = subparsers.add_parser("search", help="run, resume or join an Optuna study (proxy training per trial)")
    p.add_argument("study_dir", metavar="STUDY_DIR", help="study folder (journal, trials, artifacts)")
    p.add_argument("--study-name", default=d.study_name)
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                   help=f"default: ${STORAGE_ENV} or STUDY_DIR/study.journal; or postgresql://user:pw@host/db")
    p.add_argument("--space", default=d.space, help=f"search space: {', '.join(SPACE_PRESETS)} or a JSON file")
    p.add_argument("--resolution", type=positive_int, default=None)
    p.add_argument("--data", default=d.data, help="image folder, .npz or builtin:shapes[:N]")
    p.add_argument("--trials", type=positive_int, default=d.n_trials, help="finished trials the study should hold")
    p.add_argument("--objective", choices=OBJECTIVES, default=d.objective)
    p.add_argument("--quality", choices=QUALITIES, default=d.quality,
                   help="proxy quality: val (validation loss), val-rel (mean log ratio of the validation loss to "
                        "the best linear denoiser's at each t), kid or fid (of --fid-n samples)")
    p.add_argument("--preconditioning", choices=PRECONDITIONINGS, default=d.preconditioning,
                   help="how every candidate's network output becomes the prediction: none (predict eps/v), "
                        "edm (EDM scalings) or wiener (residual over the data's Wiener filter); statistics "
                        "measured from the training split")
    p.add_argument("--cost", choices=COSTS, default=d.cost, help="macs: trajectory MACs; latency: measured")
    p.add_argument("--sampler", choices=OPTUNA_SAMPLERS, default=d.sampler)
    p.add_argument("--pruner", choices=PRUNERS, default=d.pruner, help="single-objective studies only")
    p.add_argument("--max-macs", type=float, default=None, help="budget: mean MACs per sampling step")
    p.add_argument("--max-params", type=positive_int, default=None, help="budget: total parameters")
    p.add_argument("--sampling-steps", type=positive_int, default=d.sampling_steps)
    p.add_argument("--proxy-images", type=positive_int, default=d.proxy_images)
    p.add_argument("--proxy-batch", type=positive_int, default=d.proxy_batch)
    p.add_argument("--proxy-lr", type=float, default=d.proxy_lr)
    p.add_argument("--val-images", type=positive_int, default=d.val_images)
    p.add_argument("--val-every", type=nonneg_int, default=d.val_every, help="proxy validation every K steps")
    p.add_argument("--fid-n", type=positive_int, default=d.fid_n)
    p.add_argument("--fid-steps", type=positive_int, default=d.fid_steps)
    p.add_argument("--seed", type=nonneg_int, default=d.seed)
    p.add_argument("--workers", type=positive_int, default=d.workers)
    p.add_argument("--gpus", type=_gpus, default=None, help="e.g. 0,1,2,3: one per worker")
    p.add_argument("--machine-rank", type=nonneg_int, default=0, help="distinct per machine joining a study")
    p.add_argument("--warm-start", type=_warm, default=d.warm_start, help=f"from {', '.join(WARM_STARTS)}")
    p.add_argument("--max-retries", type=nonneg_int, default=d.max_retries)
    p.add_argument("--heartbeat-interval", type=positive_int, default=d.heartbeat_interval)
    p.add_argument("--grace-period", type=positive_int, default=d.grace_period)
    p.add_argument("--device", default=None)
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    p.add_argument("--keep-proxy-checkpoints", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_search)
    register_quickstart(subparsers)


def _quickstart(args: argparse.Namespace) -> int:
    config = QuickstartConfig.tiny() if args.tiny else QuickstartConfig()
    report = run_quickstart(args.out, config)
    print(f"quickstart finished: open {report}")
    return 0


def register_quickstart(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quickstart", help="spectrum -> search -> export -> train -> samples on built-in data")
    p.add_argument("out", metavar="OUT", help="output folder (rerun to resume)")
    p.add_argument("--tiny", action="store_true", help="seconds-sized version (tests, smoke checks)")
    p.set_defaults(run=_quickstart)
