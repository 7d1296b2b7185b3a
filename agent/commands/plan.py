"""hosttune plan POLICY: what apply would change, tunable by tunable. Writes nothing."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.commands import tuning
from agent.commands.options import host_root_options, state_dir_options
from agent.render import print_json
from agent.tuning.api import plan_policy

EPILOG = """\
Each row: tuner, target, current value, desired value, action and reason. Actions:
  change          apply will write it (reboot-required rows are advice only: never applied)
  ok              the host already holds it (">=N"/"<=N" constraints count as held when met)
  not_applicable  the hardware or kernel feature is absent here (no cpufreq, no 1G pages, no matching disk)
  unsupported     hosttune cannot set it on this host
Rows whose reason says "restore the original" undo a setting an earlier apply made that this policy drops.

examples:
  hosttune plan llm-cpu-throughput
  hosttune plan ./my-policy.yaml --json
  hosttune plan base --sysfs fixtures/server/sys --procfs fixtures/server/proc
exit status: 0 planned, 2 bad policy (file:line and field named), 1 host error
"""


def register(sub: Any) -> None:
    p = sub.add_parser("plan", help="show what a policy would change (writes nothing)",
                       description=__doc__, epilog=EPILOG, parents=[host_root_options(), state_dir_options()],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", metavar="POLICY", help="policy name on the search path, or a YAML file")
    p.add_argument("--json", action="store_true", help="machine-readable plan")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    nvml = tuning.nvml_session(args)
    paths = tuning.host_paths(args)
    facts = tuning.gather_facts(paths, nvml)
    loaded = tuning.load(args.policy, facts)
    with tuning.located(loaded):
        plan = plan_policy(loaded.policy, paths, state=tuning.state(args), facts=facts, source=str(loaded.source),
                           nvml=nvml)
    if args.json:
        print_json({**plan.model_dump(mode="json"), "counts": plan.counts(), "summary": plan.summary()})
        return 0
    tuning.print_changes(plan, sys.stdout)
    print(f"plan {plan.policy}: {plan.summary()}")
    return 0
