"""Does the spectral prior speed up the search? A controlled experiment, repeatable with one command.

Five arms, each run as S independent studies (study seed s = 0..S-1 seeds both the sampler and the
proxy training), N small-proxy trials each, everything else equal:

    random          RandomSampler, space cpu32, no warm start
    tpe             TPE, space cpu32, no warm start
    tpe+meme-paper  TPE, space cpu32, the paper's hand-set configuration enqueued first
    tpe+prior       TPE, space cpu32, the spectral prior enqueued first
    prior-centred   TPE, space cpu32-prior (boundaries, shares and p_n around the prior), prior first

The objective is the validation loss (``--quality val``), which issue 10 measured as the proxy that
ranks like long-run KID (Kendall tau 0.93), on the Wiener-preconditioned proxy. Within a seed the
TPE arms' ten start-up trials are the random arm's draws (common random numbers; a warm start
shifts them by one), so the arms differ by their warm start and from trial 11 on.

After every trial it records the best quality so far and the hypervolume of the feasible
(quality, trajectory GMACs) points, with one reference point for all arms and seeds (the worst
quality and cost seen anywhere, plus 1 % of their ranges). Output: ``OUT/results.json``,
``OUT/prior_value.png`` (mean +- standard error over seeds), a markdown table on stdout and in
``OUT/table.md``: best after 5 and 10 trials, final best and hypervolume with their differences
from the random arm paired by seed, and the trials each arm needs to reach the random sampler's
final best of the same seed (mean over seeds; a seed that never reaches it counts as N + 1 and is
reported).

    python benchmarks/prior_value.py --data ../shared/data/utkface/crop_part1 --out runs/prior_value \
        --seeds 5 --trials 24 --proxy-images 768 --max-minutes 170

Rerunning resumes: finished trials are kept, an interrupted study continues where it stopped, and
``--max-minutes`` stops cleanly between studies. ``--report`` redraws from the saved studies.

``--reread RESULTS.json`` recomputes, from a saved ``results.json`` and without any run, two measures
that do not favour the random arm by construction (issue 23): the **area under the best-so-far curve**
(the mean over trials 1..N of the best quality so far; lower is better), each arm minus the random
arm paired by seed; and the **trials to reach a threshold taken from the pooled distribution of all
arms** (the 10 % quantile of every trial's quality, all arms and seeds together; N + 1 when never),
paired the same way. "Trials to reach random's final best" is biased: random's own final best is, by
definition, reached by random at the position of its own minimum (12.5 expected of 24 exchangeable
draws), while an arm identical to random needs more and misses it about half the time. Paired
differences are tested with paired t-tests (``memekit.analysis.stats.paired``), Holm over the arms.

    python benchmarks/prior_value.py --reread benchmarks/prior_value/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

ARMS = {
    "random": {"sampler": "random", "space": "cpu32", "warm_start": ()},
    "tpe": {"sampler": "tpe", "space": "cpu32", "warm_start": ()},
    "tpe+meme-paper": {"sampler": "tpe", "space": "cpu32", "warm_start": ("meme-paper",)},
    "tpe+prior": {"sampler": "tpe", "space": "cpu32", "warm_start": ("prior",)},
    "prior-centred": {"sampler": "tpe", "space": "cpu32-prior", "warm_start": ("prior",)},
}


def study_config(args: argparse.Namespace, arm: str, seed: int):
    from memekit.search.study import SearchConfig

    return SearchConfig(study_dir=str(Path(args.out) / arm / f"seed-{seed}"), data=args.data, n_trials=args.trials,
                        quality=args.quality, preconditioning=args.preconditioning, proxy_images=args.proxy_images,
                        proxy_batch=args.proxy_batch, proxy_lr=args.proxy_lr, proxy_warmup_images=0,
                        val_images=args.val_images, seed=seed, workers=1, device="cpu", **ARMS[arm])


def run_arm_seed(args: argparse.Namespace, arm: str, seed: int, deadline: float) -> bool:
    """Run (or resume) one study to its N trials; False when the deadline had passed before it."""
    from memekit.search.workers import run_search

    if time.time() > deadline:
        return False
    run_search(study_config(args, arm, seed), progress=False)
    print(f"{arm} seed {seed}: {args.trials} trials", flush=True)
    return True


def trajectories(args: argparse.Namespace) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """(quality, cost) of every finished trial in trial order (inf for infeasible), per arm and seed."""
    from memekit.search.results import is_feasible, load_study

    out: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for arm in ARMS:
        for seed in range(args.seeds):
            folder = Path(args.out) / arm / f"seed-{seed}"
            if not (folder / "study.journal").is_file():
                continue
            study = load_study(folder).study
            points = [(t.values[0], t.values[1]) if is_feasible(t) else (math.inf, math.inf)
                      for t in sorted(study.trials, key=lambda t: t.number) if t.values is not None]
            out.setdefault(arm, {})[seed] = points[: args.trials]
    return out


def hypervolume_2d(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both objectives minimised) and bounded by ``reference``."""
    inside = sorted((q, c) for q, c in points if q < reference[0] and c < reference[1])
    area, best_cost = 0.0, reference[1]
    for q, c in inside:  # by quality; each point adds the strip below the best cost so far
        if c < best_cost:
            area += (reference[0] - q) * (best_cost - c)
            best_cost = c
    return area


def curves(data: dict, trials: int) -> tuple[dict, tuple[float, float]]:
    finite = [p for arm in data.values() for pts in arm.values() for p in pts if math.isfinite(p[0])]
    qs, cs = np.array([p[0] for p in finite]), np.array([p[1] for p in finite])
    reference = (qs.max() + 0.01 * np.ptp(qs), cs.max() + 0.01 * np.ptp(cs))
    out = {}
    for arm, seeds in data.items():
        best, hv = [], []
        for pts in seeds.values():
            quality = [p[0] for p in pts]
            best.append(np.minimum.accumulate(quality) if quality else np.array([]))
            hv.append(np.array([hypervolume_2d(pts[:k + 1], reference) for k in range(len(pts))]))
        out[arm] = {"best": best, "hv": hv, "seeds": list(seeds)}
    return out, reference


def _se(values: np.ndarray) -> float:
    """Standard error of the mean over seeds (NaN for one seed)."""
    from memekit.analysis.stats import mean_se

    return mean_se(values).se


def trials_to_reach(best: np.ndarray, target: float, trials: int) -> int:
    hits = np.nonzero(best <= target + 1e-12)[0]
    return int(hits[0]) + 1 if len(hits) else trials + 1


def _finals(c: dict, key: str, trials: int) -> dict[int, float]:
    """Final value of ``key`` per seed, for the seeds whose study has all ``trials``."""
    return {seed: v[-1] for seed, v in zip(c["seeds"], c[key], strict=True) if len(v) == trials}


def table(curve: dict, trials: int) -> list[str]:
    """Per arm: best after 5 and 10 trials, final best and hypervolume, their paired differences from
    the random arm over the seeds both have (the arms share start-up draws, so differences are
    paired), and the trials to reach random's final best of the same seed."""
    random_best, random_hv = _finals(curve["random"], "best", trials), _finals(curve["random"], "hv", trials)
    lines = ["| arm | seeds | best after 5 trials | best after 10 | final best (mean +- SE) | minus random's, paired | "
             "final hypervolume (mean +- SE) | minus random's, paired | "
             "trials to reach random's final best (mean +- SE) "
             "| seeds that never reach it |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, c in curve.items():
        best, hv = _finals(c, "best", trials), _finals(c, "hv", trials)
        if not best:
            continue
        finals, hvs = np.array(list(best.values())), np.array(list(hv.values()))
        both = [s for s in best if s in random_best]
        d_best = np.array([best[s] - random_best[s] for s in both])
        d_hv = np.array([hv[s] - random_hv[s] for s in both])
        reach = np.array([trials_to_reach(b, random_best[s], trials) for s, b in zip(c["seeds"], c["best"],
                                                                                       strict=True)
                          if s in both and len(b) == trials])
        never = int((reach > trials).sum())
        paired = "-" if arm == "random" or not both else f"{d_best.mean():+.4f} +- {_se(d_best):.4f}"
        paired_hv = "-" if arm == "random" or not both else f"{d_hv.mean():+.4f} +- {_se(d_hv):.4f}"
        early = [np.array([b[k - 1] for b in c["best"] if len(b) == trials]) for k in (5, 10)]
        lines.append(f"| {arm} | {len(finals)} | {early[0].mean():.4f} +- {_se(early[0]):.4f} | "
                     f"{early[1].mean():.4f} +- "
                     f"{_se(early[1]):.4f} | {finals.mean():.4f} +- {_se(finals):.4f} | {paired} | "
                     f"{hvs.mean():.4f} +- {_se(hvs):.4f} | {paired_hv} | {reach.mean():.1f} +- {_se(reach):.1f} | "
                     f"{never} |")
    return lines


def plot(curve: dict, trials: int, quality: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, c in curve.items():
        for ax, key in zip(axes, ("best", "hv"), strict=True):
            full = np.array([v for v in c[key] if len(v) == trials])
            if not len(full):
                continue
            x = np.arange(1, trials + 1)
            mean = full.mean(axis=0)
            se = full.std(axis=0, ddof=1) / math.sqrt(len(full)) if len(full) > 1 else np.zeros(trials)
            ax.plot(x, mean, label=f"{arm} ({len(full)} seeds)")
            ax.fill_between(x, mean - se, mean + se, alpha=0.2)
    axes[0].set(xlabel="trial", ylabel=f"best {quality} so far", title="best proxy quality (mean +- SE)")
    axes[1].set(xlabel="trial", ylabel="hypervolume (quality, GMACs)", title="hypervolume (mean +- SE)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


POOLED_QUANTILE = 0.10  # the threshold of the unbiased "trials to reach" (declared before it was computed)


def reread(path: Path) -> list[str]:
    """The unbiased measures of ``--reread`` (module docstring) as markdown lines."""
    from memekit.analysis.stats import holm, mean_se, paired

    saved = json.loads(Path(path).read_text())
    trials = int(saved["args"]["trials"])
    arms = {arm: {int(s): [q for q, _ in pts] for s, pts in seeds.items() if len(pts) == trials}
            for arm, seeds in saved["arms"].items()}
    pooled = np.array([q for seeds in arms.values() for qs in seeds.values() for q in qs if math.isfinite(q)])
    threshold = float(np.quantile(pooled, POOLED_QUANTILE))
    measures = {}
    for arm, seeds in arms.items():
        best = {s: np.minimum.accumulate(qs) for s, qs in seeds.items()}
        measures[arm] = {"auc": {s: float(b.mean()) for s, b in best.items()},
                         "reach": {s: trials_to_reach(b, threshold, trials) for s, b in best.items()}}
    lines = [f"threshold: {threshold:.5f}, the {POOLED_QUANTILE:.0%} quantile of all {pooled.size} trials' quality "
             f"(all arms and seeds pooled); {trials} trials per study; a study that never reaches it counts "
             f"{trials + 1}", "",
             "| arm | seeds | area under best-so-far (mean +- SE) | minus random's, paired | p | Holm p | "
             "trials to reach the threshold | minus random's, paired | p | Holm p | never |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    others = [a for a in arms if a != "random"]
    diffs = {(a, k): paired([measures[a][k][s] for s in sorted(arms[a]) if s in arms["random"]],
                            [measures["random"][k][s] for s in sorted(arms[a]) if s in arms["random"]])
             for a in others for k in ("auc", "reach")}
    adjusted = {k: dict(zip(others, holm([diffs[(a, k)].p for a in others]), strict=True)) for k in ("auc", "reach")}
    for arm in arms:
        auc, reach = (mean_se(list(measures[arm][k].values())) for k in ("auc", "reach"))
        never = sum(v > trials for v in measures[arm]["reach"].values())
        cells = []
        for k, digits in (("auc", 5), ("reach", 1)):
            if arm == "random":
                cells.append("- | - | -")
                continue
            d = diffs[(arm, k)]
            cells.append(f"{d.diff:+.{digits}f} +- {d.se:.{digits}f} | {d.p:.3g} | {adjusted[k][arm]:.3g}")
        lines.append(f"| {arm} | {auc.n} | {auc.mean:.5f} +- {auc.se:.5f} | {cells[0]} | {reach.mean:.1f} +- "
                     f"{reach.se:.1f} | {cells[1]} | {never} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="training images (required unless --reread)")
    p.add_argument("--out", help="folder of the studies and results (required unless --reread)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of the arms")
    p.add_argument("--quality", default="val", help="study objective (val, as issue 10 recommends, or val-rel)")
    p.add_argument("--preconditioning", default="wiener")
    p.add_argument("--proxy-images", type=int, default=768)
    p.add_argument("--proxy-batch", type=int, default=16)
    p.add_argument("--proxy-lr", type=float, default=1e-3)
    p.add_argument("--val-images", type=int, default=128)
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly between studies after M minutes")
    p.add_argument("--report", action="store_true", help="only redraw the table and plot from the studies")
    p.add_argument("--reread", type=Path, default=None, metavar="RESULTS.json",
                   help="only the unbiased measures, from a saved results.json (no runs)")
    args = p.parse_args()
    if args.reread is not None:  # needs no data: the saved results alone
        print("\n".join(reread(args.reread)))
        return
    if args.data is None or args.out is None:
        p.error("--data and --out are required (unless --reread)")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    deadline = time.time() + 60 * args.max_minutes if args.max_minutes else math.inf
    if not args.report:
        for seed in range(args.seeds):  # seeds outermost: every arm gets its seed s before any gets s + 1
            for arm in args.arms.split(","):
                if not run_arm_seed(args, arm, seed, deadline):
                    print(f"stopped after --max-minutes {args.max_minutes}: rerun to resume")
                    break
            else:
                continue
            break
    data = trajectories(args)
    curve, reference = curves(data, args.trials)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps({"arms": {a: {str(s): pts for s, pts in d.items()}
                                                           for a, d in data.items()},
                                                  "reference": reference, "args": vars(args)}, indent=1) + "\n")
    plot(curve, args.trials, args.quality, out / "prior_value.png")
    lines = table(curve, args.trials) if "random" in curve else ["(no random arm yet)"]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
