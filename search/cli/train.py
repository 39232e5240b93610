"""``memekit train`` and ``memekit sample``: thin commands over :func:`memekit.search.train.train` and
:func:`memekit.search.sampling.sample_checkpoint`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from memekit.analysis.data import DataError, check_data_source, parse_background, spec_for_data
from memekit.analysis.device import MIXED_PRECISION
from memekit.analysis.threads import applied_threads, describe
from memekit.search.ema_profiles import DEFAULT_SIGMA_RELS
from memekit.search.train_config import TrainConfig, TrainResult, whole_batches
from memekit.search.train_errors import TrainingError, TrainingPaused
from memekit.space.spec import PRECONDITIONINGS
from memekit.space.trajectory import SAMPLERS

from .args import ArgumentGroup, nonneg_int, positive_float, positive_int, with_default

DEFAULT_IMAGES = 100_000  # the budget without --images or --steps, rounded up to whole batches


def budget_images(args: argparse.Namespace) -> int:
    """The budget in images: ``--images`` (a whole number of batches, else refused), ``--steps`` x
    ``--batch``, or :data:`DEFAULT_IMAGES` rounded up to whole batches."""
    if args.images is not None and args.steps is not None:
        raise TrainingError("give the budget either as --images or as --steps (with --batch), not both")
    if args.steps is not None:
        return args.steps * args.batch
    if args.images is not None:
        if args.images >= args.batch:  # a budget below one batch gets its own error (TrainConfig)
            whole_batches(args.images, args.batch)
        return args.images
    return -(-DEFAULT_IMAGES // args.batch) * args.batch


def posthoc_every(args: argparse.Namespace, steps: int) -> int:
    """Steps between post-hoc EMA snapshots: ``--posthoc-ema-every K``, or ``--ema-snapshots N`` spread over
    the budget (ceil(steps / N), so N per profile with the last at the end), else 0 (none)."""
    if args.posthoc_ema_every is not None and args.ema_snapshots is not None:
        raise TrainingError("give post-hoc EMA snapshots either as --posthoc-ema-every K or as --ema-snapshots N, "
                            "not both")
    if args.ema_snapshots is not None:
        return -(-steps // args.ema_snapshots)
    return args.posthoc_ema_every or 0


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    images = budget_images(args)
    return TrainConfig(
        data=args.data, images=images, batch=args.batch, lr=args.lr, warmup_images=args.warmup_images,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
        mixed_precision=args.mixed_precision, channels_last=args.channels_last, compile=args.compile,
        seed=args.seed, hflip=not args.no_hflip, data_limit=args.data_limit, log_every=args.log_every,
        val_every=args.val_every, val_images=args.val_images, sample_every=args.sample_every,
        sample_steps=args.sample_steps, checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes, keep_last=args.keep_last, device=args.device,
        background=args.background, posthoc_ema_every=posthoc_every(args, images // args.batch),
        posthoc_ema_sigma_rels=tuple(args.posthoc_ema_sigma_rel))


def _background(text: str) -> tuple[int, int, int]:
    """``--background``: grey, black, white, R,G,B or #RRGGBB, or an argparse error naming the bad value."""
    try:
        return parse_background(text)
    except DataError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _minutes(text: str) -> float:
    """A finite number of minutes >= 0, or an argparse error naming the bad value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of minutes >= 0, got {text!r}")
    return value


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- the dry run's text (the plan itself is memekit.search.train.preflight's) ------------------------
def preflight_summary(plan: dict[str, Any]) -> list[str]:
    """A few lines for people from :func:`memekit.search.train.preflight`'s plan (``--json`` prints the plan itself)."""
    spec, config, checks = plan["spec"], plan["config"], plan["checks"]
    n, params = len(plan["experts"]), sum(e["params"] for e in plan["experts"])
    intervals = " ".join(f"[{e['interval'][0]}, {e['interval'][1]})" for e in plan["experts"])
    lines = ["memekit train: dry run (checked; nothing written, nothing trained)",
             f"spec:     {spec.get('name') or 'unnamed'}, {n} expert(s), {params:,} parameters; intervals {intervals}",
             f"budget:   {plan['images_total']:,} images = {plan['images_per_expert']:,} per expert x {n}; "
             f"{plan['steps']:,} steps of batch {config['batch']}"]
    data = checks["data"]
    if data is not None:
        side = data["shape"][1] if len(data["shape"]) == 3 else data["shape"][0]
        lines.append(f"data:     {config['data']}: {data['train']:,} training and {data['validation']:,} "
                     f"validation samples at {side} px")
    precision = "fp32" if checks["mixed_precision"] == "no" else f"{checks['mixed_precision']} autocast"
    lines.append(f"device:   {checks['device']}, {precision}")
    lines.append(f"run:      {_folder_line(checks['run_folder'], plan['steps'])}")
    posthoc = checks["posthoc_ema"]
    if posthoc is not None:
        rels = ", ".join(f"{v:g}" for v in posthoc["sigma_rels"])
        lines.append(f"post-hoc EMA: profiles sigma_rel {rels}, a snapshot every {posthoc['every']:,} steps and at "
                     f"the end: {posthoc['snapshots_per_profile']:,} per profile, {posthoc['bytes'] / 1e6:,.1f} MB")
    lines += [f"  the run would say: {line}" for line in checks["messages"]]
    lines.append("ok (--dry-run --json prints the full configuration and costs)")
    return lines


def _folder_line(folder: dict[str, Any], steps: int) -> str:
    state = folder["state"]
    if state == "none":
        return "no --out given (required to train)"
    path = folder["path"]
    if state == "complete":
        return (f"{path} was trained to step {folder['step']:,}, at or beyond this budget of {steps:,} steps: "
                "nothing to train")
    if state == "resume":
        return f"{path} resumes from step {folder['step']:,} of {steps:,} ({Path(folder['checkpoint']).name})"
    if state == "start_over":
        return f"{path} holds a run stopped before its first checkpoint: it starts over at step 0"
    return f"{path}: a new run{' (the folder exists and holds no run)' if folder['exists'] else ''}"


def _train(args: argparse.Namespace) -> int:
    from memekit.search.train import (
        check_budget,
        preflight,
        train,
        with_preconditioning,
    )

    main_rank = os.environ.get("RANK", "0") == "0"
    if main_rank and (threads := applied_threads()) is not None:
        _say(describe(threads))
    if args.json and not args.dry_run:
        raise TrainingError("--json prints the dry run's plan: give it with --dry-run")
    config = config_from_args(args)
    spec = spec_for_data(args.spec, config.data, args.resolution)
    spec = with_preconditioning(spec, args.preconditioning, config.data, config.background)
    if args.dry_run:
        check_budget(spec, config, int(os.environ.get("WORLD_SIZE", "1")))
        plan = preflight(spec, config, args.out, resume=args.resume, allow_config_change=args.allow_config_change)
        if main_rank:
            print(json.dumps(plan, indent=2) if args.json else "\n".join(preflight_summary(plan)))
        return 0
    if args.out is None:
        raise TrainingError("--out RUN_DIR is required (unless --dry-run)")
    check_budget(spec, config, int(os.environ.get("WORLD_SIZE", "1")))
    check_data_source(config.data)
    n = spec.n_experts
    if main_rank:
        per = config.steps * config.batch
        default = (f" (the default {DEFAULT_IMAGES:,} rounded up to whole batches)"
                   if args.images is None and args.steps is None and per != DEFAULT_IMAGES else "")
        _say(f"budget: {per:,} images in total{default} = {per // n:,} per expert x {n} expert(s); {config.steps:,} "
             f"steps of batch {config.batch} ({config.batch // n} per expert)")
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes is not None else None
    try:
        result = train(spec, config, args.out, resume=args.resume, progress=not args.quiet, deadline=deadline,
                       say=_say, allow_config_change=args.allow_config_change)
    except TrainingPaused as paused:  # a planned stop, not an error: exit 0 so that scripts go on
        if main_rank:
            _say(f"memekit: paused after --max-minutes {args.max_minutes:g}: {paused}")
        return 0
    if main_rank:
        print(result_line(result))
    return 0


def result_line(result: TrainResult) -> str:
    """What ``memekit train`` prints at the end: counts of the whole run, throughput of this call."""
    per_expert = set(result.images_per_expert)
    each = f"{per_expert.pop():,}" if len(per_expert) == 1 else str(result.images_per_expert)
    val = result.val.get("val_loss")
    tail = f"val loss {val if val is None else round(val, 5)}; checkpoint {result.checkpoint}"
    if result.images_trained == 0:
        return (f"{result.run_dir} was trained to step {result.steps:,} before ({result.images_seen:,} images in "
                f"total, {each} per expert): nothing left to train; {tail}")
    return (f"trained to step {result.steps:,}: {result.images_seen:,} images in total, {each} per expert; "
            f"{result.images_trained:,} in this run at {result.train_images_per_s:.1f} img/s; {tail}")


def _sample(args: argparse.Namespace) -> int:
    from memekit.search.sampling import sample_checkpoint, sample_plan

    options = dict(n=args.n, sampler=args.sampler, steps=args.steps, eta=args.eta, seed=args.seed, batch=args.batch,
                   device=args.device, use_ema=not args.no_ema, mixed_precision=args.mixed_precision,
                   overwrite=args.overwrite, autoencoder=args.autoencoder)
    if args.dry_run:
        print(json.dumps(sample_plan(args.checkpoint, args.out, **options), indent=2))
        return 0
    report = sample_checkpoint(args.checkpoint, args.out, progress=not args.quiet, **options)
    if report.undecoded is not None:
        _say(f"memekit: {report.undecoded}")
        print(f"{report.n} latents, NOT decoded -> {report.out} (a latent file: shift/scale and the autoencoder "
              f"recorded) in {report.seconds:.1f} s; rerun with --autoencoder PATH to get images")
        return 0
    print(f"{report.n} images -> {report.out} in {report.seconds:.1f} s ({report.images_per_s:.2f} img/s; "
          f"{args.sampler}, {args.steps if args.sampler == 'ddim' else 'all'} steps; checkpoint step "
          f"{report.step}, {'raw' if args.no_ema else 'EMA'} weights)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_sample(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    d = TrainConfig()
    p = subparsers.add_parser("train", help="train a spec or preset (auto-resumes from RUN_DIR)",
                              usage="%(prog)s SPEC.json|PRESET [--out RUN_DIR] [OPTIONS]",  # options by group below
                              description="Train a spec or preset under an image budget. Rerunning the command "
                                          "resumes from RUN_DIR's newest readable checkpoint and says so (a folder "
                                          "without one starts over, and says so); a larger --images or --steps "
                                          "extends the run, while another batch, learning rate, warm-up, data, "
                                          "seed or spec needs --allow-config-change. Nothing is written before the "
                                          "data has been read.")
    p.add_argument("spec", metavar="SPEC.json|PRESET", help="a spec JSON (e.g. from memekit export) or a preset name")
    p.add_argument("--out", metavar="RUN_DIR",
                   help=with_default("run folder: checkpoints, log.jsonl, samples; required unless --dry-run", "none"))
    _data_options(p.add_argument_group("data", "What the run trains on (part of what a resumed run must match)."), d)
    _budget_options(p.add_argument_group("budget and optimiser"), d)
    _posthoc_options(p.add_argument_group(
        "post-hoc EMA", "Snapshots of power-function EMA profiles (EDM2), from which 'memekit ema RUN_DIR "
        "--sigma-rel ...' reconstructs the weights of any EMA length after training; off by default (the run "
        "trains to the same weights either way). A profile spans the whole run: turn it on from the start."), d)
    _record_options(p.add_argument_group("logs, validation, samples and checkpoints"), d)
    _run_options(p.add_argument_group("run", "Where and how this invocation runs, and how it resumes."))
    out = p.add_argument_group("output")
    out.add_argument("--dry-run", action="store_true",
                     help="check what the run would check before its first step (data readable and not empty, "
                          "device and precision, the run folder: new, resumable from step N, or refused) and print "
                          "a summary; write nothing, train nothing")
    out.add_argument("--json", action="store_true", help="with --dry-run: print the resolved configuration, costs "
                                                         "and checks as JSON instead of the summary")
    out.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    p.set_defaults(run=_train)



def _data_options(g: ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--data", default=d.data, help="image folder, .npz, builtin:shapes[:N], or a latent .npz made by "
                                                  "memekit encode (a preset is then built for its channels and size)")
    g.add_argument("--resolution", type=positive_int, default=None,
                   help=with_default("image size", "the spec's; presets: 32, or the latents' size"))
    g.add_argument("--preconditioning", choices=PRECONDITIONINGS, default=None,
                   help=with_default("replace the spec's preconditioning (statistics measured from the training "
                                     "split)", "the spec's own"))
    g.add_argument("--data-limit", type=positive_int, default=None,
                   help=with_default("use the first K training images", "all"))
    g.add_argument("--no-hflip", action="store_true", help="no random horizontal flips (latents are never flipped)")
    g.add_argument("--background", type=_background, default=d.background, metavar="COLOUR",
                   help=with_default("the colour transparent pixels are composited onto: grey, black, white, R,G,B "
                                     "or #RRGGBB (a resumed run keeps its own)",
                                     f"grey {','.join(map(str, d.background))}"))


def _budget_options(g: ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--images", type=positive_int, default=None,
                   help=with_default("budget: images seen, all experts together; a whole number of batches (any "
                                     "other is refused, never rounded; a larger budget on rerun extends the run)",
                                     f"--steps x --batch, else {DEFAULT_IMAGES:,} rounded up to whole batches, as "
                                     "the budget line says"))
    g.add_argument("--steps", type=positive_int, default=None,
                   help=with_default("budget as optimiser steps (x --batch)", "from --images"))
    g.add_argument("--batch", type=positive_int, default=d.batch, help="images per step, all experts together")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate after the warm-up")
    g.add_argument("--warmup-images", type=nonneg_int, default=d.warmup_images,
                   help="linear learning-rate warm-up over this many images")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="per-expert gradient-norm clip (0: none)")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay (with a warm-up)")
    g.add_argument("--seed", type=nonneg_int, default=d.seed, help="seed of the weights and of every step's randomness")


def _posthoc_options(g: ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--posthoc-ema-every", type=positive_int, default=None, metavar="K",
                   help=with_default("a snapshot of each profile every K steps and at the end "
                                     "(RUN_DIR/ema_snapshots/, float32: profiles x model size each)", "none"))
    g.add_argument("--ema-snapshots", type=positive_int, default=None, metavar="N",
                   help=with_default("N snapshots of each profile spread over the budget, the last at the end "
                                     "(sets --posthoc-ema-every to ceil(steps / N))", "none"))
    g.add_argument("--posthoc-ema-sigma-rel", type=positive_float, nargs="+", default=list(d.posthoc_ema_sigma_rels),
                   metavar="S", help=with_default("the tracked profiles' relative standard deviations, two or more "
                                                  "in (0, 0.289)", f"{' '.join(map(str, DEFAULT_SIGMA_RELS))}, as "
                                                                   "EDM2"))


def _record_options(g: ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--log-every", type=positive_int, default=d.log_every,
                   help="steps between log.jsonl records and, when stderr is no terminal, status lines")
    g.add_argument("--val-every", type=nonneg_int, default=d.val_every,
                   help="steps between validations (0: at the end only)")
    g.add_argument("--val-images", type=positive_int, default=d.val_images,
                   help="held-out images of the validation loss")
    g.add_argument("--sample-every", type=nonneg_int, default=d.sample_every,
                   help="steps between sample grids (0: at the end only)")
    g.add_argument("--sample-steps", type=positive_int, default=d.sample_steps, help="DDIM steps of the grids")
    g.add_argument("--checkpoint-every", type=nonneg_int, default=d.checkpoint_every,
                   help="steps between checkpoints (0: by time, at a pause and at the end only)")
    g.add_argument("--checkpoint-minutes", type=_minutes, default=d.checkpoint_minutes, metavar="M",
                   help="also a checkpoint once M minutes of training passed since the last one, so a long run "
                        "has one within its first minutes (0: by steps only)")
    g.add_argument("--keep-last", type=positive_int, default=d.keep_last,
                   help="checkpoints kept (with their EMA weights)")


def _run_options(g: ArgumentGroup) -> None:
    g.add_argument("--device", default=None, help=with_default("cpu, cuda or cuda:N", "cuda if available"))
    g.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no", help="autocast dtype (CUDA only)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format (CUDA only)")
    g.add_argument("--compile", action="store_true", help="torch.compile every expert")
    g.add_argument("--max-minutes", type=positive_float, default=None, metavar="M",
                   help=with_default("stop after M minutes of training with a checkpoint and exit 0; the same "
                                     "command resumes (time-limited or preemptible allocations)", "no limit"))
    g.add_argument("--resume", metavar="CHECKPOINT", default=None,
                   help=with_default("resume from this checkpoint", "RUN_DIR's latest"))
    g.add_argument("--allow-config-change", action="store_true",
                   help="go on although what was trained differs from the checkpoint's (or, before the first "
                        "checkpoint, config.json's): batch, lr, warm-up, weight decay, grad clip, EMA decay, flips, "
                        "data, data limit, background or seed, or resume without the post-hoc EMA tracking the run "
                        "had (the change is logged; a larger budget needs no flag)")


def _register_sample(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="sample images from a run folder or checkpoint",
                              description="Sample images from a run folder (its latest checkpoint) or a "
                                          "checkpoint with DDIM or DDPM, with the EMA weights unless --no-ema, into "
                                          "a folder of PNGs or an .npz; a run trained on latents is decoded by its "
                                          "autoencoder.")
    p.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT", help="run folder (its latest checkpoint) or .pt file")
    p.add_argument("--out", required=True, metavar="DIR|FILE.npz", help="a folder of PNGs or an .npz file")
    p.add_argument("--n", type=positive_int, default=64, help="number of images")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="diffusion sampler")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (DDPM always takes all T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="batch k is drawn with seed + k")
    p.add_argument("--batch", type=positive_int, default=64, help="images per sampling batch")
    p.add_argument("--device", default=None, help=with_default("cpu, cuda or cuda:N", "cuda if available"))
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no", help="autocast dtype (CUDA only)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--autoencoder", metavar="PATH", default=None,
                   help=with_default("a run trained on latents: the autoencoder folder that decodes its samples "
                                     "(it must have the weights the run recorded; without one, an .npz --out "
                                     "keeps the undecoded latents)", "the one the run recorded"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--dry-run", action="store_true", help="print the checkpoint and the settings as JSON, write "
                                                          "nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_sample)
