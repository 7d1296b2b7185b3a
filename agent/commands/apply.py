"""hosttune apply POLICY: apply a policy to the host as one crash-safe transaction."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.commands import tuning
from agent.commands.options import host_root_options, state_dir_options
from agent.render import print_json
from agent.tuning.api import apply_policy
from agent.tuning.plan import Plan

EPILOG = """\
Before each host write the original value is journaled under the state dir (atomic write + fsync); after each
write the value is read back and checked (a short hugepage pool is an error, not a success). If any step fails,
every write of this apply is rolled back and the command exits 1 naming the failing tunable. An apply or revert
interrupted earlier (even by kill -9) is rolled back before anything else. Applying the same policy twice
changes nothing the second time. Kernel command line items are printed as advice and never applied.

Crash testing: HOSTTUNE_CRASH_AFTER_WRITES=N makes the process SIGKILL itself right after its N-th host write.

examples:
  hosttune apply llm-cpu-throughput
  hosttune apply ./my-policy.yaml --json
  HOSTTUNE_STATE_DIR=/tmp/ht hosttune apply base --procfs /tmp/tree/proc --sysfs /tmp/tree/sys
exit status: 0 applied, 1 failed and rolled back, 2 bad policy (nothing written)
"""


def register(sub: Any) -> None:
    p = sub.add_parser("apply", help="apply a policy (journaled, rolled back on any failure)",
                       description=__doc__, epilog=EPILOG, parents=[host_root_options(), state_dir_options()],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", metavar="POLICY", help="policy name on the search path, or a YAML file")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    nvml = tuning.nvml_session(args)
    paths = tuning.host_paths(args)
    tuning.check_writable(paths)
    facts = tuning.gather_facts(paths, nvml)
    loaded = tuning.load(args.policy, facts)
    with tuning.located(loaded):
        result = apply_policy(loaded.policy, paths, tuning.state(args), facts=facts, source=str(loaded.source),
                              nvml=nvml)
    if args.json:
        print_json(result)
        return 0
    if result.recovered:
        print(f"recovered: {result.recovered}")
    plan = Plan(policy=result.policy, changes=result.changes)
    tuning.print_changes(plan, sys.stdout)
    changed = sum(1 for c in result.changes if c.writes)
    print(f"applied {result.policy}: {changed} changed, {result.writes} host writes (txn {result.txn}); "
          f"{plan.summary()}")
    return 0
