"""``memekit train`` and ``memekit sample``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from memekit.analysis.data import check_data_source
from memekit.analysis.device import MIXED_PRECISION
from memekit.search.sampling import sample_checkpoint
from memekit.search.train import (
    TrainConfig,
    TrainingError,
    TrainingPaused,
    check_budget,
    dry_run,
    train,
    with_preconditioning,
)
from memekit.space import resolve_spec
from memekit.space.diffusion import SAMPLERS
from memekit.space.precondition import PRECONDITIONINGS

from .args import nonneg_int, positive_float, positive_int


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.images is not None and args.steps is not None:
        raise TrainingError("give the budget either as --images or as --steps (with --batch), not both")
    images = args.images if args.images is not None else (args.steps or 0) * args.batch or 100_000
    return TrainConfig(
        data=args.data, images=images, batch=args.batch, lr=args.lr, warmup_images=args.warmup_images,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision, channels_last=args.channels_last, compile=args.compile,
        seed=args.seed, hflip=not args.no_hflip, data_limit=args.data_limit, log_every=args.log_every,
        val_every=args.val_every, val_images=args.val_images, sample_every=args.sample_every,
        sample_steps=args.sample_steps, checkpoint_every=args.checkpoint_every, keep_last=args.keep_last,
        device=args.device)


def _train(args: argparse.Namespace) -> int:
    spec = resolve_spec(args.spec, args.resolution)
    config = config_from_args(args)
    spec = with_preconditioning(spec, args.preconditioning, config.data)
    if args.dry_run:
        print(json.dumps(dry_run(spec, config), indent=2))
        return 0
    if args.out is None:
        raise TrainingError("--out RUN_DIR is required (unless --dry-run)")
    check_budget(spec, config, int(os.environ.get("WORLD_SIZE", "1")))
    check_data_source(config.data)
    n = spec.n_experts
    main_rank = os.environ.get("RANK", "0") == "0"
    if main_rank:
        per = config.steps * config.batch
        print(f"budget: {per:,} images in total = {per // n:,} per expert x {n} expert(s); {config.steps:,} "
              f"steps of batch {config.batch} ({config.batch // n} per expert)", file=sys.stderr)
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes is not None else None
    try:
        result = train(spec, config, args.out, resume=args.resume, progress=not args.quiet, deadline=deadline)
    except TrainingPaused as paused:  # a planned stop, not an error: exit 0 so that scripts go on
        if main_rank:
            print(f"memekit: paused after --max-minutes {args.max_minutes:g}: {paused}", file=sys.stderr)
        return 0
    val = result.val.get("val_loss")
    if main_rank:
        print(f"trained to step {result.steps:,}: {result.images_seen:,} images in total, "
              f"{result.images_per_expert} per expert; {result.train_images_per_s:.1f} img/s; "
              f"val loss {val if val is None else round(val, 5)}; checkpoint {result.checkpoint}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    report = sample_checkpoint(args.checkpoint, args.out, n=args.n, sampler=args.sampler, steps=args.steps,
                               eta=args.eta, seed=args.seed, batch=args.batch, device=args.device,
                               use_ema=not args.no_ema, mixed_precision=args.mixed_precision,
                               overwrite=args.overwrite, progress=not args.quiet)
    print(f"{report.n} images -> {report.out} in {report.seconds:.1f} s ({report.images_per_s:.2f} img/s; "
          f"{args.sampler}, {args.steps if args.sampler == 'ddim' else 'all'} steps; checkpoint step "
          f"{report.step}, {'raw' if args.no_ema else 'EMA'} weights)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainConfig()
    p = subparsers.add_parser("train", help="train a spec or preset (auto-resumes from RUN_DIR)")
    p.add_argument("spec", metavar="SPEC.json|PRESET")
    p.add_argument("--data", default=defaults.data, help="image folder, .npz or builtin:shapes[:N]")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (holds checkpoints, log.jsonl, samples)")
    p.add_argument("--resolution", type=positive_int, default=None)
    p.add_argument("--preconditioning", choices=PRECONDITIONINGS, default=None,
                   help="replace the spec's preconditioning: none, edm or wiener (statistics measured from the "
                        "training split; default: the spec's own)")
    p.add_argument("--images", type=positive_int, default=None, help="budget: images seen, all experts together")
    p.add_argument("--steps", type=positive_int, default=None, help="budget as optimiser steps (x --batch)")
    p.add_argument("--batch", type=positive_int, default=defaults.batch, help="images per step, all experts")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup-images", type=nonneg_int, default=defaults.warmup_images)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--grad-clip", type=float, default=defaults.grad_clip)
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay)
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="torch.compile every expert")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--no-hflip", action="store_true", help="no random horizontal flips")
    p.add_argument("--data-limit", type=positive_int, default=None, help="use the first K training images")
    p.add_argument("--log-every", type=positive_int, default=defaults.log_every)
    p.add_argument("--val-every", type=nonneg_int, default=defaults.val_every)
    p.add_argument("--val-images", type=positive_int, default=defaults.val_images)
    p.add_argument("--sample-every", type=nonneg_int, default=defaults.sample_every)
    p.add_argument("--sample-steps", type=positive_int, default=defaults.sample_steps)
    p.add_argument("--checkpoint-every", type=nonneg_int, default=defaults.checkpoint_every)
    p.add_argument("--keep-last", type=positive_int, default=defaults.keep_last)
    p.add_argument("--max-minutes", type=positive_float, default=None, metavar="M",
                   help="stop after M minutes of training with a checkpoint and exit 0; the same command "
                        "resumes (time-limited or preemptible allocations)")
    p.add_argument("--resume", metavar="CHECKPOINT", default=None, help="resume from this checkpoint")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and costs, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_train)

    p = subparsers.add_parser("sample", help="sample images from a run folder or checkpoint")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--out", required=True, metavar="DIR|FILE.npz")
    p.add_argument("--n", type=positive_int, default=64)
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (DDPM always takes all T)")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_sample)
