"""Does it travel? One table per data set, side by side (issue 24 item 5), from the stored results only.

Reads the three comparisons (nothing is trained or sampled here):

- UTKFace 32 px: ``benchmarks/evidence_cpu32.json`` (``python benchmarks/evidence.py --profile cpu32``);
- CIFAR-10 32 px: ``benchmarks/evidence_cifar32.json`` (``--profile cifar32``);
- UTKFace 128 px through TAEF2: ``benchmarks/latent_utk128/compare.json`` (``memekit compare``, RESULTS.md).

and prints two markdown tables: every role's KID (mean +- SE over training seeds, each data set on its own
protocol, so compare within a column, never across), and the verdicts each data set's declared family gives
(the same fit and Holm correction as its own report), with whether the whole 95 % interval lies beyond the
data set's declared margin. The split row is the attention shares' main effect of the attribution on pixels
(two one-sided tests within the margin) and trial 11 against ``meme-paper``'s split on latents.

    python benchmarks/side_by_side.py                    # the two tables
    python benchmarks/side_by_side.py --plot benchmarks/side_by_side.png
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from memekit.analysis import stats
from memekit.search import ablate
from memekit.search import compare as cmp

REPO = Path(__file__).resolve().parents[1]
ROLES = ("single-large", "single-small", "multi-same", "meme-paper", "spectral prior", "searched best", "random best")


@dataclass(frozen=True)
class DataSet:
    label: str
    results: Path
    rows: dict[str, str]  # role -> row name in the results file
    split: str  # "ablation": the shares' main effect; otherwise a claim "a:b" (an equivalence claim)


DATASETS = (
    DataSet("UTKFace 32 px", REPO / "benchmarks" / "evidence_cpu32.json",
            {"single-large": "single-large", "single-small": "single-small", "multi-same": "multi-same",
             "meme-paper": "meme-paper", "spectral prior": "spectral-prior",
             "searched best": "searched-utk32bw-trial-00009", "random best": "random-best"}, "ablation"),
    DataSet("CIFAR-10 32 px", REPO / "benchmarks" / "evidence_cifar32.json",
            {"single-large": "single-large", "single-small": "single-small", "multi-same": "multi-same",
             "meme-paper": "meme-paper", "spectral prior": "spectral-prior", "searched best": "searched-best",
             "random best": "random-best"}, "ablation"),
    DataSet("UTKFace 128 px, TAEF2 latents", REPO / "benchmarks" / "latent_utk128" / "compare.json",
            {"single-small": "single-small", "meme-paper": "meme-paper-split", "searched best": "trial-11"},
            "trial-11:meme-paper-split"),
)
# (label, role a, role b, claim kind): the verdicts the summary states, per data set; role a None: the
# declared claim's own row (claim (a) on UTKFace is trial 8, the study's second pick)
VERDICTS = (("searched best beats meme-paper", "searched best", "meme-paper", "better"),
            ("spectral prior beats meme-paper", "spectral prior", "meme-paper", "better"),
            ("searched best beats random best", "searched best", "random best", "better"),
            ("(a) a searched 4-expert row no worse than single-large", None, "single-large", "noninferior"),
            ("(b) meme-paper no worse than multi-same", "meme-paper", "multi-same", "noninferior"),
            ("searched best beats single-small", "searched best", "single-small", "better"),
            ("meme-paper beats single-small", "meme-paper", "single-small", "better"))


def margin_of(results: dict) -> float:
    """The data set's declared margin (every margin-bearing claim of one file shares it)."""
    margins = {c.margin for c in cmp.stored_claims(results) if c.margin is not None}
    if len(margins) != 1:
        raise SystemExit(f"expected one declared margin, found {sorted(margins)}")
    return margins.pop()


def beyond(d: stats.Difference, margin: float) -> str:
    """Where the 95 % interval of A - B lies against the margin."""
    lo, hi = d.interval()
    if hi < -margin:
        return "beyond the margin"
    if lo > margin:
        return "beyond the margin, the other way"
    if -margin < lo and hi < margin:
        return "within the margin"
    return "interval crosses the margin"


def kid_cell(values: dict[str, dict[str, float]], row: str) -> str:
    seeds = list(values.get(row, {}).values())
    if not seeds:
        return "not scored"
    e = stats.mean_se(seeds)
    return f"{e.mean:.4f}" + (f" +- {e.se:.4f}" if e.n > 1 else "") + f" ({e.n})"


def verdict_cell(ds: DataSet, verdicts: list[cmp.Verdict], a: str | None, b: str, kind: str, margin: float) -> str:
    if (a is not None and a not in ds.rows) or b not in ds.rows:
        return "-"
    found = [v for v in verdicts if (v.claim.b, v.claim.kind) == (ds.rows[b], kind)
             and (a is None or v.claim.a == ds.rows[a])]
    if not found:
        return "not declared"
    v = found[0]
    d = v.difference
    who = "" if a is not None else f"{v.claim.a}: "
    if math.isnan(d.diff):
        return f"{who}waits for its rows"
    word = v.text.rsplit("-> ", 1)[-1]  # compare's own verdict word
    return f"{who}{d.diff:+.4f} +- {d.se:.4f}: **{word}** (Holm p {v.p_holm:.2g}); {beyond(d, margin)}"


def split_cell(ds: DataSet, results: dict, verdicts: list[cmp.Verdict], margin: float) -> str:
    """Whether the conv/attention split mattered: the shares' main effect of the attribution, or an
    equivalence claim between two rows that differ only in the split (latents)."""
    if ds.split != "ablation":
        a, b = ds.split.split(":")
        eq = next((v for v in verdicts if (v.claim.a, v.claim.b, v.claim.kind) == (a, b, "equivalent")), None)
        if eq is None or math.isnan(eq.difference.diff):
            return "waits for its rows"
        d = eq.difference
        word = "negligible (equivalent)" if eq.met else "not shown negligible"
        return (f"{a} - {b} (the study's split against meme-paper's) {d.diff:+.4f} +- {d.se:.4f}: **{word}** "
                f"(TOST Holm p {eq.p_holm:.2g}); {beyond(d, margin)}")
    stored = ablate.stored(results)
    if not stored:
        return "no attribution recorded"
    cells, groups = next(iter(stored.values()))
    values, _ = cmp.run_scores(results, "kid", list(cells.values()))
    if set(values) != set(cells.values()):
        return "waits for the attribution's cells"
    found, _, _ = ablate.effects(values, cells, groups)
    shares = next(e for e in found if e.label == "shares")
    d = shares.difference
    p_tost = stats.holm([stats.equivalence_p(e.difference, margin) for e in found[:len(groups)]])
    q = p_tost[[e.label for e in found[:len(groups)]].index("shares")]
    word = "negligible" if q < stats.ALPHA else "not shown negligible"
    return (f"attention shares' main effect {d.diff:+.4f} +- {d.se:.4f}: **{word}** (TOST Holm p {q:.2g}); "
            f"{beyond(d, margin)}")


def plot(loaded: list, path: Path) -> None:
    """One panel per data set: each scored role's KID, mean +- SE over training seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(loaded), figsize=(4.2 * len(loaded), 3.2), squeeze=False)
    for ax, (ds, results, _, margin) in zip(axes[0], loaded, strict=True):
        ax.set_title(ds.label, fontsize=10)
        ax.set_xlabel("KID (lower is better)")
        shown = []
        for role in ROLES:
            if results is None or role not in ds.rows:
                continue
            values, _ = cmp.run_scores(results, "kid", [ds.rows[role]])
            seeds = list(values.get(ds.rows[role], {}).values())
            if seeds:
                shown.append((role, stats.mean_se(seeds)))
        if not shown:
            ax.text(0.5, 0.5, "no runs scored yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
            ax.set_xticks([])
            continue
        y = range(len(shown))
        ax.barh(list(y), [e.mean for _, e in shown], xerr=[e.se if e.n > 1 else 0 for _, e in shown],
                color=["tab:orange" if role == "searched best" else "tab:blue" for role, _ in shown], capsize=3)
        ax.set_yticks(list(y), [f"{role} ({e.n})" for role, e in shown], fontsize=8)
        ax.invert_yaxis()
        paper = dict(shown).get("meme-paper")
        if paper is not None and not math.isnan(margin):
            ax.axvspan(paper.mean - margin, paper.mean + margin, color="0.85", zorder=0)
    fig.suptitle("KID by data set, mean +- SE (training seeds in brackets; each panel its own protocol; grey: "
                 "meme-paper +- the declared margin)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also draw the KIDs, one panel per data set")
    args = p.parse_args(argv)
    loaded = []
    for ds in DATASETS:
        if not ds.results.is_file():
            loaded.append((ds, None, [], math.nan))
            continue
        results = cmp.load_results(ds.results)
        verdicts, _ = cmp.decide(results, cmp.stored_claims(results))
        loaded.append((ds, results, verdicts, margin_of(results)))
    head = "| | " + " | ".join(ds.label for ds, *_ in loaded) + " |"
    rule = "|---|" + "---|" * len(loaded)
    print("KID, mean +- SE over training seeds (their count); each column its own protocol\n")
    print(head + "\n" + rule)
    for role in ROLES:
        cells = []
        for ds, results, _, _ in loaded:
            if role not in ds.rows:
                cells.append("-")
            elif results is None:
                cells.append("no results yet")
            else:
                values, _ = cmp.run_scores(results, "kid", [ds.rows[role]])
                cells.append(kid_cell(values, ds.rows[role]))
        print(f"| {role} | " + " | ".join(cells) + " |")
    print("\nVerdicts (each data set's declared family, one fit, Holm); A - B in KID, 95 % interval against the "
          "margin (" + ", ".join(f"{ds.label} {m:g}" for ds, _, _, m in loaded if not math.isnan(m)) + ")\n")
    print(head + "\n" + rule)
    # a family is read once, when every claim of it is scored (as declared): no interim verdicts
    waiting = {ds.label for ds, _, verdicts, _ in loaded if any(math.isnan(v.difference.diff) for v in verdicts)}
    for label, a, b, kind in VERDICTS:
        cells = ["no results yet" if results is None else "read when every claim row is scored"
                 if ds.label in waiting else verdict_cell(ds, verdicts, a, b, kind, margin)
                 for ds, results, verdicts, margin in loaded]
        print(f"| {label} | " + " | ".join(cells) + " |")
    cells = ["no results yet" if results is None else split_cell(ds, results, verdicts, margin)
             for ds, results, verdicts, margin in loaded]
    print("| the conv/attention split matters? | " + " | ".join(cells) + " |")
    if args.plot is not None:
        plot(loaded, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
