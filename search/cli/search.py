"""``memekit search`` (run, resume or join an Optuna study over the MEME design space) and
``memekit quickstart`` (the whole loop on built-in data): thin commands over
:func:`memekit.search.workers.run_search` and :func:`memekit.search.quickstart.run_quickstart`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import optuna

from memekit.analysis.device import MIXED_PRECISION
from memekit.search.quickstart import QuickstartConfig, quickstart_plan, run_quickstart
from memekit.search.searchspace import SPACE_PRESETS
from memekit.search.study import (
    COSTS,
    OBJECTIVES,
    OPTUNA_SAMPLERS,
    PRUNERS,
    QUALITIES,
    STORAGE_ENV,
    SearchConfig,
    SearchError,
    StudyPlan,
    data_space,
    plan_study,
    search_config,
    stored_config,
    study_progress,
)
from memekit.search.warmstart import WARM_STARTS, startup_note, warm_start_names
from memekit.search.workers import SearchPaused, run_search
from memekit.space.precondition import PRECONDITIONINGS

from .args import background_colour, nonneg_int, positive_int


def _gpus(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1,2, got {text!r}")
    return parts


def _absolute(text: str) -> str:
    return str(Path(text).expanduser().absolute())


def _warm(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in WARM_STARTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown warm start {bad[0]!r}: choose from {', '.join(WARM_STARTS)}")
    return parts


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The study settings given on the command line (options left out are None: stored or default)."""
    names = [f.name for f in dataclasses.fields(SearchConfig) if f.name != "study_dir"]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _search(args: argparse.Namespace) -> int:
    if args.json and not args.dry_run:
        raise SearchError("--json prints the dry run's configuration: give it with --dry-run")
    resumed = stored_config(args.study_dir) is not None
    config = search_config(args.study_dir, **given_settings(args))
    plan = plan_study(config, update=args.update)  # everything checked, the storage reached; nothing written
    if args.dry_run:
        return _dry_run(args, config, plan, resumed)
    print(banner(plan, resumed), flush=True)
    note = startup_note(config.sampler, config.n_trials, len(warm_start_names(config, data_space(config))))
    if note:
        print(f"memekit: warning: {note}", flush=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one memekit line per trial instead
    try:
        study = run_search(config, progress=not args.quiet, update=args.update, say=print, plan=plan)
    except SearchPaused as paused:  # a stop, not an error: no traceback, the one line that says how to go on
        sys.stdout.flush()
        print(f"memekit: {paused}", file=sys.stderr, flush=True)
        return paused.exit_code
    print(f"done: {study_progress(study, config.n_trials).text()}; export with: memekit export {config.study_dir} "
          f"--out {config.study_dir}/export")
    return 0


def banner(plan: StudyPlan, resumed: bool) -> str:
    """The first line of a search: new, resuming or joining which study where, and what is left of it."""
    c = plan.config
    line = (f"{plan.state} study {c.study_name!r} in {plan.where}: {c.n_trials} trials, {c.workers} worker(s), "
            f"objective {c.objective} ({', '.join(c.metric_names())}), sampler {c.sampler}")
    if resumed:
        line += " (stored settings, with the options given)"
    return line + (f"; {plan.progress.text()}" if plan.progress is not None else "")


def _dry_run(args: argparse.Namespace, config: SearchConfig, plan: StudyPlan, resumed: bool) -> int:
    """The checked plan: a short summary, or (``--json``) the resolved configuration as JSON."""
    if args.json:
        print(json.dumps({"config": config.public_dict(), "resumed": resumed, "state": plan.state,
                          "space": data_space(config).to_dict(), "proxy": config.proxy_config().to_dict()}, indent=2))
        return 0
    for line in plan.summary():
        print(line)
    print("dry run: everything checked, nothing written; run the command without --dry-run to start (--json prints "
          "the full configuration)")
    return 0


def _stored(d: Any) -> str:
    return f"(default: {d}; resuming: the study's stored value)"


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_search(subparsers)
    _register_quickstart(subparsers)


def _register_search(subparsers: argparse._SubParsersAction) -> None:
    d = SearchConfig(study_dir="")
    p = subparsers.add_parser(
        "search", help="run, resume or join an Optuna study (proxy training per trial)",
        description="Run an Optuna study in STUDY_DIR. 'memekit search STUDY_DIR' alone resumes it with its stored "
                    "settings; options given replace them (what a trial measures never changes; other settings "
                    "need --update, recorded in the study). Data, space and settings are checked before anything "
                    "is written.")
    p.add_argument("study_dir", metavar="STUDY_DIR", help="study folder (search_config.json, journal, trials, "
                                                         "artifacts)")
    _study_options(p, d)
    _proxy_options(p, d)
    _run_options(p, d)
    p.add_argument("--update", action="store_true",
                   help="allow changing settings of an existing study (trials, sampler, pruner, retries, ...)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything the run needs (data, device, storage, STUDY_DIR's study), print a "
                        "summary and exit, writing nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the resolved configuration as JSON")
    p.add_argument("--quiet", action="store_true", help="no line per finished trial")
    p.set_defaults(run=_search)


def _study_options(p: argparse.ArgumentParser, d: SearchConfig) -> None:
    p.add_argument("--study-name", default=None, help=f"the study's name in its storage {_stored(d.study_name)}")
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                   help=f"journal file or postgresql://user:pw@host/db (default: ${STORAGE_ENV}, the stored one or "
                        "STUDY_DIR/study.journal)")
    p.add_argument("--space", default=None,
                   help=f"search space: {', '.join(SPACE_PRESETS)} or a JSON file {_stored(d.space)}")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help="image size (default: the space's, or the latents' size; resuming: the stored value)")
    p.add_argument("--data", default=None, help="image folder, .npz, builtin:shapes[:N], or a latent .npz of memekit "
                                                f"encode (experts then see its channels) {_stored(d.data)}")
    p.add_argument("--trials", dest="n_trials", metavar="N", type=positive_int, default=None,
                   help=f"finished trials the study should hold {_stored(d.n_trials)}")
    p.add_argument("--objective", choices=OBJECTIVES, default=None, help=f"multi: (quality, cost) {_stored(d.objective)}")
    p.add_argument("--quality", choices=QUALITIES, default=None,
                   help="proxy quality: val (validation loss), val-rel (mean log ratio of the validation loss to "
                        "the best linear denoiser's at each t), kid or fid (of --fid-n samples) " + _stored(d.quality))
    p.add_argument("--preconditioning", choices=PRECONDITIONINGS, default=None,
                   help="how every candidate's network output becomes the prediction: none (predict eps/v), "
                        "edm (EDM scalings) or wiener (residual over the data's Wiener filter); statistics "
                        "measured from the training split " + _stored(d.preconditioning))
    p.add_argument("--cost", choices=COSTS, default=None,
                   help=f"macs: trajectory MACs; latency: measured {_stored(d.cost)}")
    p.add_argument("--sampler", choices=OPTUNA_SAMPLERS, default=None, help=f"Optuna sampler {_stored(d.sampler)}")
    p.add_argument("--pruner", choices=PRUNERS, default=None,
                   help=f"single-objective studies only {_stored(d.pruner)}")
    p.add_argument("--max-macs", type=float, default=None,
                   help="budget: mean MACs per sampling step (default: none; resuming: the stored value)")
    p.add_argument("--max-params", type=positive_int, default=None,
                   help="budget: total parameters (default: none; resuming: the stored value)")
    p.add_argument("--sampling-steps", type=positive_int, default=None,
                   help=f"DDIM steps of the costed trajectory {_stored(d.sampling_steps)}")
    p.add_argument("--warm-start", type=_warm, default=None,
                   help=f"comma-separated, from {', '.join(WARM_STARTS)} {_stored(','.join(d.warm_start))}")
    p.add_argument("--prior", type=_absolute, default=None, metavar="PRIOR_SPEC.json",
                   help="seed the study's spectral prior (the prior warm start, the centre of a *-prior space) with "
                        "the prior_spec.json of 'memekit spectrum DATA --out DIR', re-cut to the space's backbone "
                        "(default: recomputed from the training split; resuming: the study's prior, never changed)")
    p.add_argument("--seed", type=nonneg_int, default=None, help=f"seed of the proxy runs and samplers "
                                                                 f"{_stored(d.seed)}")
    p.add_argument("--background", type=background_colour, default=None, metavar="COLOUR",
                   help="what transparent pixels of the data become: grey, black, white, R,G,B or #RRGGBB "
                        "(default: grey 128,128,128; resuming: the study's, never changed)")


def _proxy_options(p: argparse.ArgumentParser, d: SearchConfig) -> None:
    p.add_argument("--proxy-images", type=positive_int, default=None,
                   help=f"proxy training budget per trial, in images {_stored(d.proxy_images)}")
    p.add_argument("--proxy-batch", type=positive_int, default=None, help=f"proxy batch {_stored(d.proxy_batch)}")
    p.add_argument("--proxy-lr", type=float, default=None, help=f"proxy learning rate {_stored(d.proxy_lr)}")
    p.add_argument("--proxy-warmup-images", type=nonneg_int, default=None,
                   help=f"proxy learning-rate warm-up {_stored(d.proxy_warmup_images)}")
    p.add_argument("--val-images", type=positive_int, default=None,
                   help=f"held-out images of the validation loss {_stored(d.val_images)}")
    p.add_argument("--val-every", type=nonneg_int, default=None,
                   help=f"proxy validation every K steps, 0: at the end (for pruners) {_stored(d.val_every)}")
    p.add_argument("--fid-n", type=positive_int, default=None, help=f"samples per trial for kid/fid "
                                                                    f"{_stored(d.fid_n)}")
    p.add_argument("--fid-steps", type=positive_int, default=None, help=f"DDIM steps of those samples "
                                                                        f"{_stored(d.fid_steps)}")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=None,
                   help=f"proxy autocast dtype (CUDA only) {_stored(d.mixed_precision)}")
    p.add_argument("--keep-proxy-checkpoints", action=argparse.BooleanOptionalAction, default=None,
                   help="keep every proxy run's checkpoints (default: no; resuming: the stored value)")


def _run_options(p: argparse.ArgumentParser, d: SearchConfig) -> None:
    p.add_argument("--workers", type=positive_int, default=None, help=f"worker processes {_stored(d.workers)}")
    p.add_argument("--gpus", type=_gpus, default=None,
                   help="e.g. 0,1,2,3: one per worker (default: all visible; resuming: the stored value)")
    p.add_argument("--machine-rank", type=nonneg_int, default=None,
                   help=f"distinct per machine joining a study {_stored(d.machine_rank)}")
    p.add_argument("--max-retries", type=nonneg_int, default=None,
                   help=f"retries of a trial that raised {_stored(d.max_retries)}")
    p.add_argument("--heartbeat-interval", type=positive_int, default=None,
                   help=f"seconds between heartbeats of a running trial {_stored(d.heartbeat_interval)}")
    p.add_argument("--grace-period", type=positive_int, default=None,
                   help=f"seconds without heartbeat before a trial counts as dead {_stored(d.grace_period)}")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available; resuming: the stored value)")


def _quickstart(args: argparse.Namespace) -> int:
    config = QuickstartConfig.tiny() if args.tiny else QuickstartConfig()
    config = dataclasses.replace(config, seed=args.seed, device=args.device)
    if args.dry_run:
        print(json.dumps(quickstart_plan(args.out, config), indent=2))
        return 0
    report = run_quickstart(args.out, config)
    print(f"quickstart finished: open {report}")
    return 0


def _register_quickstart(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quickstart", help="spectrum -> search -> export -> train -> samples on built-in data",
                              description="The whole memekit loop on built-in data; every stage writes its own "
                                          "folder in OUT and a rerun skips the stages done before.")
    p.add_argument("out", metavar="OUT", help="output folder (rerun to resume)")
    p.add_argument("--tiny", action="store_true", help="seconds-sized version (tests, smoke checks)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the study, the training and the samples")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dry-run", action="store_true", help="print the stages' settings as JSON, write nothing")
    p.set_defaults(run=_quickstart)
