"""``memekit space list|show|check``: inspect the design space."""

from __future__ import annotations

import argparse
from pathlib import Path

from memekit.space.cost import COUNTER_NAME, check_spec, cost_table
from memekit.space.errors import SpecError
from memekit.space.presets import PRESETS, get_preset, resolve_spec

from .args import positive_int, with_default


def _list(args: argparse.Namespace) -> int:
    for name in PRESETS:
        spec = get_preset(name, args.resolution)
        print(f"{name:<14} {spec.n_experts} expert(s), intervals {[list(iv) for iv in spec.intervals]}, "
              f"p={list(spec.soft_assignment)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    spec = resolve_spec(args.spec, args.resolution)
    print(spec.to_json())
    print(cost_table(spec, args.steps, get_preset("single-large", spec.experts[0].resolution)))
    return 0


def _check(args: argparse.Namespace) -> int:
    spec = resolve_spec(args.spec)
    try:
        cost = check_spec(spec, args.steps)
    except SpecError as err:
        raise SpecError(f"{Path(args.spec).name}: {err}") from None
    print(f"ok: {args.spec}: {spec.n_experts} expert(s) at {spec.experts[0].resolution} px, "
          f"T={spec.diffusion.timesteps}; {cost.params:,} parameters, {cost.mean_macs_per_step / 1e6:,.1f} MMACs "
          f"per sampling step, {cost.trajectory_macs / 1e9:,.2f} GMACs per {args.steps}-step DDIM trajectory "
          f"({COUNTER_NAME}, batch 1)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    space = subparsers.add_parser("space", help="list, show and check architecture specs",
                                  description="The design space: the presets (list), a spec's resolved JSON and "
                                              "cost table (show), and a spec checked and costed without building "
                                              "it (check).")
    space.set_defaults(torch_threads=False)  # specs and tables: no torch threads to set (nor torch to import)
    sub = space.add_subparsers(dest="space_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="list the presets",
                       description="Every preset with its number of experts, intervals and soft assignment p_n.")
    p.add_argument("--resolution", type=positive_int, default=32, help="image size of the listed presets")
    p.set_defaults(run=_list)
    p = sub.add_parser("show", help="resolved spec JSON and its cost table",
                       description="A preset or spec JSON resolved to the full spec JSON, and its cost table "
                                   "(parameters, MACs per step and per trajectory) beside single-large.")
    p.add_argument("spec", metavar="NAME|SPEC.json", help="a preset name or a spec JSON")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help=with_default("image size", "the spec's; presets: 32"))
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps of the costed trajectory")
    p.set_defaults(run=_show)
    p = sub.add_parser("check", help="validate a spec JSON or preset and print its parameters and MACs",
                       description="Validate a spec JSON or preset without building it: print its parameters and "
                                   "MACs and exit 0, or print the problem and exit 2 (also beyond 10^10 "
                                   "parameters).")
    p.add_argument("spec", metavar="SPEC.json|PRESET", help="the spec JSON or preset name to check")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps of the costed trajectory")
    p.set_defaults(run=_check)
