"""Attribution of a gain: the hybrid specs that swap one group of choices at a time between two specs.

Two specs of one backbone (``winner`` and ``baseline``) differ in several groups of choices
(house style 20). A *group* is one of

- ``shares``: every expert's per-stage attention share (the conv/attention split);
- ``intervals``: the time-step intervals the experts own;
- ``p_n``: the soft interval assignment (and its out-of-interval rule);
- ``preconditioning``: the diffusion's preconditioning (skip) and its measured statistics;

or a union of them written with ``+`` (``intervals+p_n``: "allocation", how the training images are
spread over t). With groups ``g_1 ... g_k`` the full factorial has ``2^k`` cells: cell ``(c_1, ...,
c_k)`` takes group ``g_i`` from the winner when ``c_i = 1`` and from the baseline otherwise, so
``(0, ..., 0)`` is the baseline, ``(1, ..., 1)`` the winner and every other cell a hybrid. Expert n
of one spec is matched with expert n of the other (the n-th cleanest interval). Everything outside
the named groups must be equal (the same backbone): :func:`hybrid_cells` refuses otherwise, naming
the field.

With two groups A, B and cell means m_00, m_10, m_01, m_11 (A first), the effects are

    main effect of A = ((m_10 - m_00) + (m_11 - m_01)) / 2,
    main effect of B = ((m_01 - m_00) + (m_11 - m_10)) / 2,
    interaction      = (m_11 - m_10) - (m_01 - m_00),

and ``m_11 - m_00 = main A + main B`` exactly (the interaction cancels in the sum), so the two main
effects split the winner's gain; the interaction says how much the split depends on the order.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from memekit.analysis.stats import Difference, RowFit, equivalence_p, fit_rows, holm
from memekit.space import MemeSpec
from memekit.space.errors import MemekitError

GROUPS = ("shares", "intervals", "p_n", "preconditioning")
PROCESS_FIELDS = ("timesteps", "schedule", "prediction")  # the forward process: never swapped


class AblationError(MemekitError, ValueError):
    """Two specs that cannot be ablated against each other, or an unknown group."""


def parse_groups(groups: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """``["shares", "intervals+p_n"]`` -> ``(("shares",), ("intervals", "p_n"))``; every name once."""
    parsed, seen = [], set()
    for group in groups:
        parts = tuple(p.strip() for p in group.split("+") if p.strip())
        unknown = [p for p in parts if p not in GROUPS]
        if not parts or unknown:
            raise AblationError(f"unknown group {group!r}: choose from {', '.join(GROUPS)} (join with '+')")
        if seen & set(parts):
            raise AblationError(f"group {group!r} repeats {', '.join(sorted(seen & set(parts)))}: name each once")
        seen |= set(parts)
        parsed.append(parts)
    if not parsed:
        raise AblationError("give at least one group to swap")
    return tuple(parsed)


def group_label(group: Sequence[str]) -> str:
    return "+".join(group)


def differing_groups(winner: MemeSpec, baseline: MemeSpec) -> tuple[str, ...]:
    """The groups in which the two specs differ (the default groups of an ablation)."""
    _check_same_backbone(winner, baseline)
    return tuple(g for g in GROUPS if _take(baseline, winner, (g,)) != baseline)


def hybrid_cells(winner: MemeSpec, baseline: MemeSpec,
                 groups: Sequence[Sequence[str]]) -> dict[tuple[int, ...], MemeSpec]:
    """Every cell of the ``2^k`` factorial over ``groups`` (module docstring): cell -> spec, named
    ``hybrid-`` + the groups taken from the winner (the two corners keep their own names)."""
    _check_same_backbone(winner, baseline)
    for group in groups:
        if _take(baseline, winner, group) == baseline:
            raise AblationError(f"the two specs do not differ in {group_label(group)}: drop that group "
                                f"(they differ in {', '.join(differing_groups(winner, baseline)) or 'nothing'})")
    cells = {}
    for cell in itertools.product((0, 1), repeat=len(groups)):
        spec = baseline
        for on, group in zip(cell, groups, strict=True):
            if on:
                spec = _take(spec, winner, group)
        if all(cell):
            spec = dataclasses.replace(spec, name=winner.name)
        elif any(cell):
            taken = ", ".join(group_label(g) for on, g in zip(cell, groups, strict=True) if on)
            spec = dataclasses.replace(spec, name=f"hybrid: {taken} of {winner.name or 'winner'}, "
                                                  f"the rest of {baseline.name or 'baseline'}")
        cells[cell] = spec
    return cells


def _take(spec: MemeSpec, source: MemeSpec, group: Sequence[str]) -> MemeSpec:
    """``spec`` with the choices of ``group`` taken from ``source``."""
    changes: dict = {}
    if "shares" in group:
        changes["experts"] = tuple(dataclasses.replace(e, attention_share=s.attention_share)
                                   for e, s in zip(spec.experts, source.experts, strict=True))
    if "intervals" in group:
        changes["intervals"] = source.intervals
    if "p_n" in group:
        changes["soft_assignment"] = source.soft_assignment
        changes["out_of_interval"] = source.out_of_interval
    if "preconditioning" in group:
        changes["diffusion"] = dataclasses.replace(spec.diffusion, **{
            f.name: getattr(source.diffusion, f.name) for f in dataclasses.fields(source.diffusion)
            if f.name not in PROCESS_FIELDS})
    return dataclasses.replace(spec, **changes)


def _check_same_backbone(winner: MemeSpec, baseline: MemeSpec) -> None:
    if winner.n_experts != baseline.n_experts:
        raise AblationError(f"the winner has {winner.n_experts} experts and the baseline {baseline.n_experts}: "
                            "an ablation swaps choices between specs with the same number of experts")
    for n, (a, b) in enumerate(zip(winner.experts, baseline.experts, strict=True)):
        a_, b_ = (dataclasses.replace(e, attention_share=(0.0,) * e.n_stages) for e in (a, b))
        if a_ != b_:
            field = next(f.name for f in dataclasses.fields(a) if getattr(a_, f.name) != getattr(b_, f.name))
            raise AblationError(f"expert {n} differs in {field} ({getattr(a, field)} against {getattr(b, field)}), "
                                "which no group swaps: ablate specs of one backbone (same widths, depths, heads)")
    field = next((f for f in PROCESS_FIELDS if getattr(winner.diffusion, f) != getattr(baseline.diffusion, f)), None)
    if field is not None:
        raise AblationError(f"the diffusion differs in {field} ({getattr(winner.diffusion, field)} against "
                            f"{getattr(baseline.diffusion, field)}), which no group swaps: use one schedule")


# ---- rows and effects ------------------------------------------------------------------------------------
def cell_name(cell: Sequence[int], groups: Sequence[Sequence[str]], winner: str, baseline: str) -> str:
    """The row name of a cell: the two corners keep their names, a hybrid is ``hybrid-`` + the groups
    it takes from the winner (``hybrid-shares``, ``hybrid-intervals+p_n``)."""
    if all(cell):
        return winner
    if not any(cell):
        return baseline
    return "hybrid-" + "-".join(group_label(g) for on, g in zip(cell, groups, strict=True) if on)


def effect_weights(cells: Sequence[Sequence[int]], subset: Sequence[int]) -> list[float]:
    """Contrast weights of the effect of the groups in ``subset`` (indices) over a 2^k factorial:
    ``w_c = prod_{i in subset} (2 c_i - 1) / 2^(k - |subset|)`` (a main effect: the winner's choice
    minus the baseline's, averaged over the other groups; a two-way interaction: the difference of
    differences, averaged over the rest)."""
    k = len(cells[0])
    scale = 2.0 ** (k - len(subset))
    return [math.prod(2 * c[i] - 1 for i in subset) / scale for c in cells]


@dataclass(frozen=True)
class Effect:
    """One effect of the factorial: its label, estimate (a Difference) and Holm-adjusted p."""

    label: str
    difference: Difference
    p_holm: float
    share: float  # of the winner's total difference (NaN for interactions)


def effects(values: Mapping[str, Mapping[str, float]], cells: Mapping[tuple[int, ...], str],
            groups: Sequence[Sequence[str]], blocked: bool = True) -> tuple[list[Effect], Difference, RowFit]:
    """Main effects and two-way interactions of the factorial whose cell -> row name is ``cells``,
    from ``values[row][training seed]``; the total (winner - baseline); Holm over the effects."""
    fit = fit_rows({name: values[name] for name in cells.values()}, blocked=blocked)
    order = list(cells)
    names = [cells[c] for c in order]
    k = len(groups)
    total = fit.contrast({cells[(1,) * k]: 1.0, cells[(0,) * k]: -1.0}, "winner - baseline")
    subsets = [(i,) for i in range(k)] + list(itertools.combinations(range(k), 2))
    diffs, labels = [], []
    for subset in subsets:
        w = effect_weights(order, subset)
        diffs.append(fit.contrast(dict(zip(names, w, strict=True))))
        labels.append(" x ".join(group_label(groups[i]) for i in subset)
                      + (" (interaction)" if len(subset) > 1 else ""))
    adjusted = holm([d.p for d in diffs])
    out = [Effect(label, d, q, d.diff / total.diff if len(s) == 1 and total.diff else math.nan)
           for label, d, q, s in zip(labels, diffs, adjusted, subsets, strict=True)]
    return out, total, fit


def report(results: dict, cells: Mapping[tuple[int, ...], str], groups: Sequence[Sequence[str]], metric: str = "kid",
           blocked: bool = True, margin: float | None = None) -> str:
    """The cells' table, each effect with its interval and Holm-adjusted p, and what pairing bought;
    with ``margin``, whether each main effect is negligible (equivalent to 0 within +-margin, two
    one-sided tests, Holm over the main effects)."""
    from . import compare

    rows = list(cells.values())
    lines = compare.table(results, rows, metric)
    values, sampling = compare.run_scores(results, metric, rows)
    if set(values) != set(rows):
        waiting = ", ".join(r for r in rows if r not in values)
        return "\n".join(lines + ["", f"effects wait for cells not scored yet: {waiting}"])
    found, total, fit = effects(values, cells, groups, blocked)
    lo, hi = total.interval()
    lines += ["", f"{metric.upper()} winner - baseline: {total.diff:+.4f} +- {total.se:.4f} (95 % CI {lo:+.4f} .. "
                  f"{hi:+.4f}; {fit.label}; sampling seeds {', '.join(sorted(sampling))})", "",
              "| effect | estimate +- SE | 95 % CI | dof | p | Holm p | share of the total |",
              "|---|---|---|---|---|---|---|"]
    for e in found:
        d = e.difference
        lo, hi = d.interval()
        share = "-" if math.isnan(e.share) else f"{100 * e.share:.0f} %"
        lines.append(f"| {e.label} | {d.diff:+.4f} +- {d.se:.4f} | {lo:+.4f} .. {hi:+.4f} | {d.dof:g} | {d.p:.3g} | "
                     f"{e.p_holm:.3g} | {share} |")
    if margin is not None:
        mains = found[:len(groups)]  # the main effects come first
        tost = holm([equivalence_p(e.difference, margin) for e in mains])
        lines += [""] + [f"- {e.label}: within +-{margin:g} of 0 (two one-sided tests, Holm over {len(mains)} main "
                         f"effects): p = {q:.3g} -> {'negligible' if q < 0.05 else 'not shown negligible'}"
                         for e, q in zip(mains, tost, strict=True)]
    lines.append("\n" + compare.pairing_line(results, rows, metric))
    return "\n".join(lines)


def record(results: dict, label: str, cells: Mapping[tuple[int, ...], str], groups: Sequence[Sequence[str]]) -> None:
    """Store an ablation's design in the results file (``ablations[label]``), so reports can be redrawn."""
    results.setdefault("ablations", {})[label] = {
        "groups": [list(g) for g in groups], "cells": {",".join(map(str, c)): name for c, name in cells.items()}}


def stored(results: dict) -> dict[str, tuple[dict[tuple[int, ...], str], tuple[tuple[str, ...], ...]]]:
    """label -> (cells, groups) of the ablations recorded in the results file."""
    return {label: ({tuple(int(v) for v in key.split(",")): name for key, name in a["cells"].items()},
                    tuple(tuple(g) for g in a["groups"])) for label, a in results.get("ablations", {}).items()}
