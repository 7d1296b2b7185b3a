"""hosttune revert: put back every value hosttune changed, byte for byte, and forget the applied policy."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli import host_root_options, state_dir_options
from agent.commands import tuning
from agent.engine.api import revert
from agent.render import print_json

EPILOG = """\
The originals come from the journal in the state dir: the value each target held before hosttune first changed
it. Revert is idempotent and journaled itself: a revert killed half-way is finished by the next revert, and an
apply that was killed half-way is rolled back first. The host roots are the ones recorded at apply time.

examples:
  hosttune revert
  hosttune revert --json --state-dir /tmp/ht
exit status: 0 everything restored (or nothing to do), 1 some target could not be restored (named; kept in the
journal so the next revert retries it)
"""


def register(sub: Any) -> None:
    p = sub.add_parser("revert", help="restore every original value from the journal",
                       description=__doc__, epilog=EPILOG, parents=[host_root_options(), state_dir_options()],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = revert(tuning.state(args))
    if args.json:
        print_json({**result.model_dump(mode="json"), "ok": result.ok})
        return 0 if result.ok else 1
    if result.recovered:
        print(f"recovered: {result.recovered}")
    if result.resumed:
        print("finished an interrupted revert")
    for key in result.restored:
        print(f"restored  {key}")
    for line in result.failed:
        print(f"FAILED    {line}")
    if not result.restored and not result.failed and not result.unchanged:
        print("nothing to revert")
    else:
        print(f"reverted: {len(result.restored)} restored, {len(result.unchanged)} already original, "
              f"{len(result.failed)} failed, {result.writes} host writes")
    return 0 if result.ok else 1
