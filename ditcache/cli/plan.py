"""``ditcache show-plan``: the per-step plan of a schedule, its MACs and theoretical speedup."""

from __future__ import annotations

import argparse
import json

from .arguments import positive_int
from .inputs import schedule


def cmd_show_plan(args: argparse.Namespace) -> int:
    from ditcache.graphs import costs_for
    from ditcache.graphs.adaptive import is_adaptive
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.registry import get_spec

    spec = get_spec(args.model)
    sched = schedule(args)
    costs = costs_for(spec, args.batch)
    plan = plan_for(sched, spec)
    if args.json:
        data = plan.to_dict()
        if is_adaptive(plan):  # decided at run time: the bounds of what a run can cost
            low, high = plan.macs_bounds(costs)
            data.update(model=spec.name, macs_bounds={"min": low, "max": high},
                        theoretical_speedup_bounds=[1.0, high / low], plan_hash=plan.hash())
        else:
            data.update(model=spec.name, step_macs=plan.step_macs(costs),
                        theoretical_speedup=plan.theoretical_speedup(costs), plan_hash=plan.hash())
        print(json.dumps(data, indent=2))
    else:
        print(f"model {spec.name} ({spec.num_blocks} blocks), batch {args.batch}, schedule {sched.source}")
        print(f"schedule: {json.dumps(plan.schedule)}")
        print(plan.table(costs))
    return 0


def register(sub, epilog: str) -> None:
    """The ``show-plan`` subcommand."""
    p = sub.add_parser("show-plan", help="print the per-step plan of a schedule", epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-xl", help="registry model (default: %(default)s)")
    p.add_argument("--schedule", help="schedule.yaml (default: full)")
    p.add_argument("--steps", type=positive_int, help="steps of the full schedule when no --schedule is given")
    p.add_argument("--batch", type=positive_int, default=1, help="images per call for the MACs column")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show_plan)
