"""hosttune verify: does the host still hold the applied policy? Reads only."""

from __future__ import annotations

import argparse
from typing import Any

from agent.commands import tuning
from agent.commands.options import host_root_options, state_dir_options
from agent.render import print_json, table
from agent.tuning.api import verify

EPILOG = """\
Every tunable of the last applied policy is read again and compared the way plan compared it: exact values
(whitespace-normalised), or at-least/at-most for ">=N"/"<=N" (a value someone raised above a floor is held).
Reboot-only advice shows as pending_reboot, not drift.

examples:
  hosttune verify
  hosttune verify --json
exit status: 0 nothing drifted (or nothing applied), 1 drift or an interrupted transaction
"""


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="check the applied policy still holds (drift)",
                       description=__doc__, epilog=EPILOG, parents=[host_root_options(), state_dir_options()],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = verify(tuning.state(args), nvml=tuning.nvml_session(args))
    if args.json:
        print_json({**result.model_dump(mode="json"), "ok": result.ok})
        return 0 if result.ok else 1
    if result.items:
        table(("tuner", "target", "expected", "current", "state"),
              [[i.tuner, i.target, i.expected, i.current, i.state] for i in result.items])
    print(("verify: " if result.ok else "verify: DRIFT: ") + result.summary())
    return 0 if result.ok else 1
