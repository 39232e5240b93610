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
from typing import TYPE_CHECKING, Any

from memekit.analysis.device import MIXED_PRECISION
from memekit.search.search_config import (
    COSTS,
    OBJECTIVES,
    OPTUNA_SAMPLERS,
    PRUNERS,
    QUALITIES,
    STORAGE_ENV,
    WARM_STARTS,
    SearchConfig,
    SearchError,
    search_config,
    stored_config,
)
from memekit.search.searchspace import SPACE_PRESETS
from memekit.space.spec import PRECONDITIONINGS

from .args import ArgumentGroup, background_colour, nonneg_int, positive_int, with_default

if TYPE_CHECKING:
    from memekit.search.study import StudyPlan


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
    import optuna

    from memekit.search.study import data_space, plan_study, study_progress
    from memekit.search.warmstart import startup_note, warm_start_names
    from memekit.search.workers import SearchPaused, run_search

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


def plan_lines(plan: StudyPlan) -> list[str]:
    """The dry run's lines from :func:`memekit.search.study.plan_study`'s plan: the study's state, where it
    is stored, the data, the device, the trials."""
    from memekit.analysis.data import background_name, data_shape
    from memekit.search.study import data_space
    from memekit.search.warmstart import prior_source_text

    c = plan.config
    state = {"new": "a new study",
             "resuming": f"resuming: {plan.progress.text() if plan.progress else ''}",
             "joining": f"joining a study of another machine: {plan.progress.text() if plan.progress else ''}"}
    lines = [f"study {c.study_name!r} in {c.study_dir}: {state[plan.state]}",
             f"storage: {plan.where} (reached)",
             f"data: {c.data}: {plan.images['all']:,} {'latents' if data_shape(c.data).latent else 'images'} "
             f"({plan.images['train']:,} train, {plan.images['reference']:,} reference) readable at "
             f"{data_space(c).base_expert.resolution} px; transparent pixels onto {background_name(c.background)}",
             *(f"data: {note}" for note in plan.notes),
             f"device: {plan.device}, mixed precision {c.mixed_precision}, {c.workers} worker(s)"
             + (f" on GPUs {','.join(c.gpus)}" if c.gpus else ""),
             f"trials: {c.n_trials} of space {c.space}, objective {c.objective} ({', '.join(c.metric_names())}), "
             f"sampler {c.sampler}, proxy {c.proxy_images:,} images in batches of {c.proxy_batch}"]
    if plan.changes:
        lines.append("changes: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in plan.changes.items()))
    if plan.source is not None:
        lines.append(prior_source_text(plan.source))
    return lines + list(plan.prior_notes)


def _dry_run(args: argparse.Namespace, config: SearchConfig, plan: StudyPlan, resumed: bool) -> int:
    """The checked plan: a short summary, or (``--json``) the resolved configuration as JSON."""
    from memekit.search.study import data_space

    if args.json:
        print(json.dumps({"config": config.public_dict(), "resumed": resumed, "state": plan.state,
                          "space": data_space(config).to_dict(), "proxy": config.proxy_config().to_dict()}, indent=2))
        return 0
    for line in plan_lines(plan):
        print(line)
    print("dry run: everything checked, nothing written; run the command without --dry-run to start (--json prints "
          "the full configuration)")
    return 0


# ---- the parser: one group per kind of setting, the resuming rule said once per group -------------
STUDY_NOTE = ("What every trial measures, fixed when the study is created. Resuming, an option left out "
              "keeps the study's stored value, and a different value is refused.")
PROXY_NOTE = ("The short training every trial gets. Resuming, an option left out keeps the study's stored "
              "value; the budget, batch, learning rate, warm-up, --val-images and --fid-* are fixed with the "
              "study (a different value is refused), the others change with --update.")
SEARCH_NOTE = ("How the study proposes and retries trials. Resuming, an option left out keeps the study's "
               "stored value; a different one needs --update (recorded in the study).")
RUN_NOTE = ("Where and how this invocation runs; free to differ between invocations and machines. Resuming, "
            "an option left out keeps the study's stored value.")


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_search(subparsers)
    _register_quickstart(subparsers)


def _register_search(subparsers: argparse._SubParsersAction) -> None:
    d = SearchConfig(study_dir="")
    p = subparsers.add_parser(
        "search", help="run, resume or join an Optuna study (proxy training per trial)",
        usage="%(prog)s STUDY_DIR [OPTIONS]",  # the options, by group, follow
        description="Run an Optuna study in STUDY_DIR. 'memekit search STUDY_DIR' alone resumes it with its "
                    "stored settings; options given replace them, as each group below says. Data, space and "
                    "settings are checked before anything is written.")
    p.add_argument("study_dir", metavar="STUDY_DIR",
                   help="study folder (search_config.json, journal, trials, artifacts)")
    _study_options(p.add_argument_group("study", STUDY_NOTE), d)
    _proxy_options(p.add_argument_group("proxy", PROXY_NOTE), d)
    _search_options(p.add_argument_group("search", SEARCH_NOTE), d)
    _run_options(p.add_argument_group("run", RUN_NOTE), d)
    out = p.add_argument_group("output")
    out.add_argument("--dry-run", action="store_true",
                     help="check everything the run needs (data, device, storage, STUDY_DIR's study), print a "
                          "summary and exit, writing nothing")
    out.add_argument("--json", action="store_true",
                     help="with --dry-run: print the resolved configuration as JSON")
    out.add_argument("--quiet", action="store_true", help="no line per finished trial")
    p.set_defaults(run=_search)



def _study_options(g: ArgumentGroup, d: SearchConfig) -> None:
    g.add_argument("--space", default=None,
                   help=with_default(f"search space: {', '.join(SPACE_PRESETS)} or a JSON file", d.space))
    g.add_argument("--resolution", type=positive_int, default=None,
                   help=with_default("image size", "the space's, or the latents' size"))
    g.add_argument("--data", default=None,
                   help=with_default("image folder, .npz, builtin:shapes[:N], or a latent .npz of memekit "
                                     "encode (experts then see its channels)", d.data))
    g.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help=with_default("multi: (quality, cost); single: quality", d.objective))
    g.add_argument("--quality", choices=QUALITIES, default=None,
                   help=with_default("proxy quality: val (validation loss), val-rel (mean log ratio of the "
                                     "validation loss to the best linear denoiser's at each t), kid or fid "
                                     "(of --fid-n samples)", d.quality))
    g.add_argument("--preconditioning", choices=PRECONDITIONINGS, default=None,
                   help=with_default("how every candidate's network output becomes the prediction: none "
                                     "(predict eps/v), edm (EDM scalings), wiener (residual over the data's "
                                     "per-channel "
                                     "Wiener filter) or colour (residual over the affine colour-mixing linear "
                                     "denoiser); statistics measured from the training split",
                                     d.preconditioning))
    g.add_argument("--cost", choices=COSTS, default=None,
                   help=with_default("macs: trajectory MACs; latency: measured", d.cost))
    g.add_argument("--max-macs", type=float, default=None,
                   help=with_default("budget: mean MACs per sampling step", "none"))
    g.add_argument("--max-params", type=positive_int, default=None,
                   help=with_default("budget: total parameters", "none"))
    g.add_argument("--sampling-steps", type=positive_int, default=None,
                   help=with_default("DDIM steps of the costed trajectory", d.sampling_steps))
    g.add_argument("--prior", type=_absolute, default=None, metavar="PRIOR_SPEC.json",
                   help=with_default("seed the study's spectral prior (the prior warm start, the centre of a "
                                     "*-prior space) with the prior_spec.json of 'memekit spectrum DATA --out "
                                     "DIR', re-cut to the space's backbone", "recomputed from the training split"))
    g.add_argument("--seed", type=nonneg_int, default=None,
                   help=with_default("seed of the proxy runs and samplers", d.seed))
    g.add_argument("--background", type=background_colour, default=None, metavar="COLOUR",
                   help=with_default("what transparent pixels of the data become: grey, black, white, R,G,B or "
                                     "#RRGGBB", f"grey {','.join(map(str, d.background))}"))


def _proxy_options(g: ArgumentGroup, d: SearchConfig) -> None:
    g.add_argument("--proxy-images", type=positive_int, default=None,
                   help=with_default("proxy training budget per trial, in images", d.proxy_images))
    g.add_argument("--proxy-batch", type=positive_int, default=None, help=with_default("proxy batch", d.proxy_batch))
    g.add_argument("--proxy-lr", type=float, default=None, help=with_default("proxy learning rate", d.proxy_lr))
    g.add_argument("--proxy-warmup-images", type=nonneg_int, default=None,
                   help=with_default("proxy learning-rate warm-up", d.proxy_warmup_images))
    g.add_argument("--val-images", type=positive_int, default=None,
                   help=with_default("held-out images of the validation loss", d.val_images))
    g.add_argument("--val-every", type=nonneg_int, default=None,
                   help=with_default("proxy validation every K steps, 0: at the end (for pruners)", d.val_every))
    g.add_argument("--fid-n", type=positive_int, default=None,
                   help=with_default("samples per trial for kid/fid", d.fid_n))
    g.add_argument("--fid-steps", type=positive_int, default=None,
                   help=with_default("DDIM steps of those samples", d.fid_steps))
    g.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=None,
                   help=with_default("proxy autocast dtype (CUDA only)", d.mixed_precision))
    g.add_argument("--keep-proxy-checkpoints", action=argparse.BooleanOptionalAction, default=None,
                   help=with_default("keep every proxy run's checkpoints", "no"))


def _search_options(g: ArgumentGroup, d: SearchConfig) -> None:
    g.add_argument("--trials", dest="n_trials", metavar="N", type=positive_int, default=None,
                   help=with_default("finished trials the study should hold", d.n_trials))
    g.add_argument("--sampler", choices=OPTUNA_SAMPLERS, default=None, help=with_default("Optuna sampler", d.sampler))
    g.add_argument("--pruner", choices=PRUNERS, default=None,
                   help=with_default("single-objective studies only", d.pruner))
    g.add_argument("--warm-start", type=_warm, default=None,
                   help=with_default(f"trials enqueued first, comma-separated, from {', '.join(WARM_STARTS)}",
                                     ",".join(d.warm_start)))
    g.add_argument("--max-retries", type=nonneg_int, default=None,
                   help=with_default("retries of a trial that raised", d.max_retries))
    g.add_argument("--heartbeat-interval", type=positive_int, default=None,
                   help=with_default("seconds between heartbeats of a running trial", d.heartbeat_interval))
    g.add_argument("--grace-period", type=positive_int, default=None,
                   help=with_default("seconds without heartbeat before a trial counts as dead", d.grace_period))
    g.add_argument("--update", action="store_true",
                   help="allow changing these settings of an existing study (and --val-every, "
                        "--mixed-precision, --keep-proxy-checkpoints)")


def _run_options(g: ArgumentGroup, d: SearchConfig) -> None:
    g.add_argument("--study-name", default=None, help=with_default("the study's name in its storage", d.study_name))
    g.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                   help=with_default("journal file or postgresql://user:pw@host/db",
                                     f"${STORAGE_ENV}, the stored one or STUDY_DIR/study.journal"))
    g.add_argument("--workers", type=positive_int, default=None, help=with_default("worker processes", d.workers))
    g.add_argument("--gpus", type=_gpus, default=None,
                   help=with_default("e.g. 0,1,2,3: one per worker", "all visible"))
    g.add_argument("--machine-rank", type=nonneg_int, default=None,
                   help=with_default("distinct per machine joining a study", d.machine_rank))
    g.add_argument("--device", default=None, help=with_default("cpu, cuda or cuda:N", "cuda if available"))


def _quickstart(args: argparse.Namespace) -> int:
    from memekit.search.quickstart import QuickstartConfig, quickstart_plan, run_quickstart

    config = QuickstartConfig.tiny() if args.tiny else QuickstartConfig()
    config = dataclasses.replace(config, seed=args.seed, device=args.device)
    if args.train_images is not None:
        if args.train_images < config.final_batch:
            raise SearchError(f"--train-images {args.train_images} is less than one batch of {config.final_batch} "
                               "images: give more")
        config = dataclasses.replace(config, final_images=args.train_images)
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
    p.add_argument("--train-images", type=positive_int, default=None, metavar="N",
                   help="images of the final training (default: 40,960, 2.5 of the quickstart's 3.6 min on 2 idle "
                        "cores; 163,840 draws recognisable flat shapes, about 8 min more). A rerun with more "
                        "continues the training and redraws the samples")
    p.add_argument("--dry-run", action="store_true", help="print the stages' settings as JSON, write nothing")
    p.set_defaults(run=_quickstart)
