"""``memekit compare`` (train what is missing, score, decide declared claims) and ``memekit ablate``
(the hybrids that swap one group of choices at a time between two specs, through compare)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from memekit.search import ablate as ab
from memekit.search import compare as cmp
from memekit.space import MemeSpec
from memekit.space.errors import MemekitError
from memekit.space.files import atomic_write_text
from memekit.space.spec import PRECONDITIONINGS

from .args import nonneg_int, positive_float, positive_int, with_default
from .fid import PROTOCOL_CHOICES


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- rows ------------------------------------------------------------------------------------------
def parse_row(text: str, data: str, resolution: int | None) -> tuple[str, MemeSpec, Path | None]:
    """``NAME=SOURCE`` or ``SOURCE``; SOURCE a spec JSON, a preset or a run folder (its spec; the run
    is adopted as its seed's run). The name defaults to the file's stem, the preset or the folder."""
    from memekit.analysis.data import spec_for_data

    name, sep, source = text.partition("=")
    if not sep:
        name, source = "", text
    path = Path(source)
    run = path if path.is_dir() and (path / "spec.json").is_file() else None
    spec = spec_for_data(str(path / "spec.json") if run else source, data, resolution)
    name = name or (path.name if run else path.stem if path.suffix == ".json" else source)
    if not name or "/" in name or name.startswith("."):
        raise MemekitError(f"row name {name!r} cannot name a folder: write NAME={source}")
    return name, spec, run


def _rows(texts: list[str], data: str, resolution: int | None) -> tuple[dict[str, MemeSpec], dict[str, Path]]:
    rows, runs = {}, {}
    for text in texts:
        name, spec, run = parse_row(text, data, resolution)
        if name in rows:
            raise MemekitError(f"two rows are named {name!r}: write NAME=SOURCE for one of them")
        rows[name] = spec
        if run is not None:
            runs[name] = run
    return rows, runs


def _claims(args: argparse.Namespace, rows: dict[str, MemeSpec]) -> list[cmp.Claim]:
    claims = []
    for kind in cmp.CLAIM_KINDS:
        for pair in getattr(args, kind) or []:
            a, sep, b = pair.partition(":")
            if not sep or a not in rows or b not in rows:
                raise MemekitError(f"--{kind} {pair!r}: write A:B with two row names ({', '.join(rows)})")
            claims.append(cmp.Claim(kind, a, b, None if kind == "better" else args.margin))
    return claims


def _protocol(args: argparse.Namespace) -> cmp.Protocol:
    from memekit.analysis.data import check_data_source

    check_data_source(args.data)
    pre = None if args.preconditioning == "keep" else args.preconditioning
    return cmp.Protocol(args.data, args.images, args.batch, args.lr, args.warmup_images, args.n, args.steps, pre,
                        args.fid_protocol)


def _seeds(pairs: list[str], rows: dict[str, MemeSpec]) -> dict[str, int]:
    out = {}
    for pair in pairs or []:
        name, _, k = pair.partition("=")
        if name not in rows or not k.isdigit() or int(k) < 1:
            raise MemekitError(f"--seeds takes ROW=K with a row name and K >= 1, got {pair!r}")
        out[name] = int(k)
    return out


def _adopt(comparison: cmp.Comparison, runs: dict[str, Path]) -> None:
    """A run folder given as a row becomes that row's run of its seed (a link in the work folder)."""
    for name, run in runs.items():
        seed = json.loads((run / "config.json").read_text()).get("seed", 0)
        target = cmp.run_dir(comparison, name, seed)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(run.resolve(), target_is_directory=True)
            _say(f"{name}: run {run} is its training seed {seed}")


def _execute(args: argparse.Namespace, rows: dict[str, MemeSpec], runs: dict[str, Path], claims: list[cmp.Claim],
             title: str, record=None) -> tuple[cmp.Comparison, bool]:  # noqa: ANN001 - record(results) or None
    from memekit.analysis.fid import resolve_inception_weights

    protocol = _protocol(args)
    rows = cmp.prepared_rows(rows, protocol)
    results = Path(args.results)
    work = Path(args.work) if args.work else results.with_suffix("").parent / (results.stem + "-runs")
    if args.dry_run:
        probe = cmp.open_comparison(results, protocol, rows, work, say=lambda _: None)
        todo = cmp.missing_work(probe, args.train_seeds, args.sampling_seeds, _seeds(args.seeds, rows))
        print(json.dumps({"title": title, "protocol": protocol.to_dict(), "results": str(results), "work": str(work),
                          "rows": {n: s.to_dict() for n, s in rows.items()},
                          "missing": [{"row": n, "training_seed": s, "sampling_seeds": w} for n, s, w in todo],
                          "claims": [vars(c) for c in claims]}, indent=2))
        return probe, False
    comparison = cmp.open_comparison(results, protocol, rows, work, say=_say)
    cmp.declare_claims(comparison.results, claims, time.strftime("%Y-%m-%d"))
    if record is not None:
        record(comparison.results)
    if not args.report_only:
        comparison.save()
        resolve_inception_weights(args.inception_weights)  # no weights: fail now, not after the first run
        _adopt(comparison, runs)
        deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
        done = cmp.run_comparison(comparison, args.train_seeds, args.sampling_seeds, _seeds(args.seeds, rows),
                                  args.device, args.inception_weights, deadline, _say, progress=not args.quiet)
        if not done:
            _say("not finished (--max-minutes, or runs held by another process): rerun the same command to go on")
        comparison.results = cmp.load_results(comparison.path)
        return comparison, done
    return comparison, True


def _compare(args: argparse.Namespace) -> int:
    rows, runs = _rows(args.rows, args.data, args.resolution)
    claims = _claims(args, rows)
    comparison, _ = _execute(args, rows, runs, claims, "compare")
    if args.dry_run:
        return 0
    # every claim declared in the file is one family (Holm), whichever the command names
    text = cmp.report(comparison.results, cmp.stored_claims(comparison.results), args.metric,
                      blocked=not args.unblocked, rows=list(rows))
    return _report(comparison, "report.md", "memekit compare", text)


def _ablate(args: argparse.Namespace) -> int:
    (w_name, winner, w_run), (b_name, baseline, b_run) = (parse_row(t, args.data, args.resolution)
                                                            for t in (args.winner, args.baseline))
    groups = ab.parse_groups(args.groups) if args.groups else tuple((g,) for g in ab.differing_groups(winner, baseline))
    specs = ab.hybrid_cells(winner, baseline, groups)
    cells = {c: ab.cell_name(c, groups, w_name, b_name) for c in specs}
    rows = {cells[c]: s for c, s in specs.items()}
    runs = {n: r for n, r in ((w_name, w_run), (b_name, b_run)) if r is not None}
    label = f"{w_name} vs {b_name}"
    comparison, _ = _execute(args, rows, runs, [], "ablate", lambda results: ab.record(results, label, cells, groups))
    if args.dry_run:
        return 0
    for cell, name in cells.items():
        if 0 < sum(cell) < len(cell):
            spec_file = cmp.figures_dir(comparison) / "specs" / f"{name}.json"
            spec_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(spec_file, comparison.rows[name].to_json() + "\n")
    text = ab.report(comparison.results, cells, groups, args.metric, not args.unblocked)
    return _report(comparison, "ablation.md", f"memekit ablate {w_name} {b_name}", text)


def _report(comparison: cmp.Comparison, file: str, title: str, text: str) -> int:
    """Print the report and write it beside the results file."""
    print(text)
    path = cmp.figures_dir(comparison) / file
    atomic_write_text(path, f"# {title}\n\n{text}\n")
    _say(f"report: {path}")
    return 0


# ---- parsers -----------------------------------------------------------------------------------------
def _protocol_args(p: argparse.ArgumentParser) -> None:
    d = cmp.Protocol(data="")
    g = p.add_argument_group("protocol (stored in the results file; another protocol is refused)")
    g.add_argument("--data", required=True, help="training data: image folder, .npz or builtin:shapes; scored "
                                                 "against its reference split")
    g.add_argument("--resolution", type=positive_int, default=None, help="image size of preset rows (default: 32)")
    g.add_argument("--images", type=positive_int, default=d.images,
                   help="training budget per run, all experts together")
    g.add_argument("--batch", type=positive_int, default=d.batch, help="images per optimiser step")
    g.add_argument("--lr", type=positive_float, default=d.lr, help="AdamW learning rate after the warm-up")
    g.add_argument("--warmup-images", type=nonneg_int, default=d.warmup_images, help="learning-rate warm-up")
    g.add_argument("--n", type=positive_int, default=d.n, help="samples per sampling seed")
    g.add_argument("--steps", type=positive_int, default=d.steps, help="DDIM steps of the scored samples")
    g.add_argument("--preconditioning", choices=(*PRECONDITIONINGS, "keep"), default="wiener",
                   help="the skip every row gets, measured once from the data ('keep': each spec's own)")
    g.add_argument("--fid-protocol", choices=PROTOCOL_CHOICES, default=d.fid_protocol,
                   help="how images are resized for Inception")
    r = p.add_argument_group("runs")
    r.add_argument("--results", required=True, metavar="FILE.json",
                   help="results file, shared by processes (grids and report.md in FILE/)")
    r.add_argument("--work", default=None, metavar="DIR", help="run folders DIR/ROW/seed-K (default: FILE-runs/)")
    r.add_argument("--train-seeds", type=positive_int, default=1, help="training seeds per row")
    r.add_argument("--seeds", nargs="*", metavar="ROW=K", default=[],
                   help="more training seeds for some rows (default: none)")
    r.add_argument("--sampling-seeds", type=positive_int, default=1, help="sampling seeds scored per run")
    r.add_argument("--max-minutes", type=positive_float, default=None, metavar="M",
                   help="stop cleanly after M minutes; the same command resumes (default: no limit)")
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    r.add_argument("--inception-weights", default=None, metavar="PATH", help="FID Inception weights (default: "
                                                                             "found offline, see memekit fid)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--dry-run", action="store_true", help="print the rows, protocol and missing runs as JSON")
    r.add_argument("--report-only", action="store_true", help="train nothing: the table and verdicts so far")
    v = p.add_argument_group("verdicts")
    v.add_argument("--metric", choices=tuple(cmp.METRICS), default="kid", help="the metric claims are decided on")
    v.add_argument("--unblocked", action="store_true",
                   help="do not pair runs by training seed (default: blocked, see the module docs)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="train, score and compare configurations on samples, with declared claims",
        description="Train every ROW (a spec JSON, a preset or a run folder; NAME=SOURCE to name it) for "
                    "--train-seeds seeds under one protocol, score FID / KID / LSD of --n samples per sampling "
                    "seed, and print the table and the verdicts of the claims asked for (margin, test, dof, Holm "
                    "correction). Resumable; several processes started with the same command split the runs.")
    p.add_argument("rows", nargs="+", metavar="ROW", help="NAME=SPEC.json|PRESET|RUN_DIR, or just the source")
    _protocol_args(p)
    c = p.add_argument_group("claims (lower is better; declare margins before the runs)")
    c.add_argument("--better", nargs="*", metavar="A:B",
                   help=with_default("A better than B, by a two-sided t-test", "none"))
    c.add_argument("--noninferior", nargs="*", metavar="A:B",
                   help=with_default("A no worse than B by more than --margin", "none"))
    c.add_argument("--equivalent", nargs="*", metavar="A:B",
                   help=with_default("A within --margin of B, by two one-sided tests", "none"))
    c.add_argument("--margin", type=positive_float, default=None,
                   help=with_default("the margin of --noninferior and --equivalent, in the metric's units", "none"))
    p.set_defaults(run=_compare)

    q = subparsers.add_parser(
        "ablate", help="which choice earns a gain: swap one group of choices at a time between two specs",
        description="Build the 2^k hybrids of WINNER and BASELINE (two specs of one backbone) that take each "
                    "group of choices (attention shares, intervals, p_n, preconditioning; 'intervals+p_n' swaps "
                    "two together) from one or the other, train and score them through compare, and report each "
                    "group's effect and the interactions with intervals and Holm-adjusted p.")
    q.add_argument("winner", metavar="WINNER", help="NAME=SPEC.json|PRESET|RUN_DIR")
    q.add_argument("baseline", metavar="BASELINE", help="NAME=SPEC.json|PRESET|RUN_DIR")
    q.add_argument("--groups", nargs="*", default=None, metavar="GROUP",
                   help=with_default(f"groups to swap ({', '.join(ab.GROUPS)}; join with '+')",
                                     "every group that differs"))
    _protocol_args(q)
    q.set_defaults(run=_ablate)
