"""``memekit space list|show|check``: inspect the design space."""

from __future__ import annotations

import argparse
from pathlib import Path

from memekit.space import PRESETS, MemeSpec, get_preset, load_spec, spec_cost
from memekit.space.cost import COUNTER_NAME
from memekit.space.errors import SpecError

from .cli_args import positive_int


def resolve_spec(name_or_path: str, resolution: int | None = None) -> MemeSpec:
    """A preset name or a spec JSON path -> MemeSpec (optionally re-targeted to ``resolution``)."""
    if name_or_path in PRESETS:
        return get_preset(name_or_path, resolution or 32)
    if not Path(name_or_path).exists() and not name_or_path.endswith(".json"):
        raise SpecError(
            f"{name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a spec JSON file"
        )
    spec = load_spec(name_or_path)
    return spec.with_resolution(resolution) if resolution else spec


def _fmt_share(shares: tuple[float, ...]) -> str:
    return "/".join(f"{s:.2f}" for s in shares)


def cost_table(spec: MemeSpec, steps: int) -> str:
    """Per-expert params, MACs per forward and trajectory MACs, against ``single-large``."""
    cost = spec_cost(spec, steps)
    lines = [f"{'expert':>6} {'interval':>12} {'p':>5} {'attention share (built)':>25} "
             f"{'params':>10} {'MMACs/fwd':>10} {'steps':>5} {'GMACs/traj':>10}"]
    for n, (e, c) in enumerate(zip(spec.experts, cost.experts, strict=True)):
        lo, hi = c.interval
        lines.append(f"{n:>6} {f'[{lo}, {hi})':>12} {spec.soft_assignment[n]:>5.2f} "
                     f"{_fmt_share(e.effective_attention_share()):>25} {c.params:>10,} "
                     f"{c.macs / 1e6:>10.1f} {c.steps:>5} {c.macs * c.steps / 1e9:>10.2f}")
    large = spec_cost(get_preset("single-large", spec.experts[0].resolution), steps)
    lines.append(f"total params {cost.params:,}; trajectory ({steps} DDIM steps) "
                 f"{cost.trajectory_macs / 1e9:.2f} GMACs, {cost.mean_macs_per_step / 1e6:.1f} MMACs/step")
    lines.append(f"single-large at {spec.experts[0].resolution} px: {large.trajectory_macs / 1e9:.2f} GMACs "
                 f"-> trajectory MACs ratio single-large / this = "
                 f"{large.trajectory_macs / cost.trajectory_macs:.2f}x")
    lines.append(f"counter: {COUNTER_NAME}, batch 1")
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    for name in PRESETS:
        spec = get_preset(name, args.resolution)
        print(f"{name:<14} {spec.n_experts} expert(s), intervals {[list(iv) for iv in spec.intervals]}, "
              f"p={list(spec.soft_assignment)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    spec = resolve_spec(args.spec, args.resolution)
    print(spec.to_json())
    print(cost_table(spec, args.steps))
    return 0


def _check(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    print(f"ok: {args.spec}: {spec.n_experts} expert(s) at {spec.experts[0].resolution} px, "
          f"T={spec.diffusion.timesteps}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    space = subparsers.add_parser("space", help="list, show and check architecture specs")
    sub = space.add_subparsers(dest="space_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="list the presets")
    p.add_argument("--resolution", type=positive_int, default=32)
    p.set_defaults(run=_list)
    p = sub.add_parser("show", help="resolved spec JSON and its cost table")
    p.add_argument("spec", metavar="NAME|SPEC.json")
    p.add_argument("--resolution", type=positive_int, default=None, help="image size (presets: 32 or 64)")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps of the costed trajectory")
    p.set_defaults(run=_show)
    p = sub.add_parser("check", help="validate a spec JSON (exit 0, or exit 2 with the problem)")
    p.add_argument("spec", metavar="SPEC.json")
    p.set_defaults(run=_check)
