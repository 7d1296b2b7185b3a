"""hosttune revert: put back every value hosttune changed, byte for byte, and forget the applied policy."""

from __future__ import annotations

import argparse
from typing import Any

from agent.commands import tuning
from agent.commands.options import host_root_options, state_dir_options
from agent.render import print_json
from agent.tuning.api import revert
from agent.tuning.revert import RevertResult

EPILOG = """\
The originals come from the journal in the state dir: the value each target held before hosttune first changed
it. Revert is idempotent and journaled itself: a revert killed half-way is finished by the next revert, and an
apply that was killed half-way is rolled back first. The host roots are the ones recorded at apply time.

A target someone else changed since hosttune set it is left as is and listed (now / hosttune set / original);
--force restores its original anyway. A target gone from the host (a renamed disk) is dropped with a warning.

examples:
  hosttune revert
  hosttune revert --force
  hosttune revert --json --state-dir /tmp/ht
exit status: 0 everything restored (or nothing to do), 1 some target could not be restored (named; kept in the
journal so the next revert retries it), 3 some target was changed by someone else and left as is (kept in the
journal: `hosttune revert --force` restores it)
"""
EXIT_SKIPPED = 3


def register(sub: Any) -> None:
    p = sub.add_parser("revert", help="restore every original value from the journal",
                       description=__doc__, epilog=EPILOG, parents=[host_root_options(), state_dir_options()],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.add_argument("--force", action="store_true",
                   help="also restore targets someone else changed since hosttune set them")
    p.set_defaults(func=run)


def _exit(result: RevertResult) -> int:
    return 1 if result.failed else EXIT_SKIPPED if result.skipped else 0


def run(args: argparse.Namespace) -> int:
    result = revert(tuning.state(args), force=args.force, nvml=tuning.nvml_session(args))
    if args.json:
        print_json({**result.model_dump(mode="json"), "ok": result.ok})
        return _exit(result)
    if result.recovered:
        print(f"recovered: {result.recovered}")
    if result.resumed:
        print("finished an interrupted revert")
    for key in result.restored:
        print(f"restored  {key}")
    for line in result.failed:
        print(f"FAILED    {line}")
    for d in result.skipped:
        print(f"SKIPPED   {d.key}: now {d.current!r}, hosttune set {d.expected!r} (changed by someone else; "
              f"--force restores the original {d.original!r})")
    for key in result.gone:
        print(f"gone      {key}: no longer on this host, dropped from the journal")
    if not (result.restored or result.failed or result.unchanged or result.skipped or result.gone):
        print("nothing to revert")
    else:
        print(f"reverted: {len(result.restored)} restored, {len(result.unchanged)} already original, "
              f"{len(result.skipped)} skipped, {len(result.gone)} gone, {len(result.failed)} failed, "
              f"{result.writes} host writes")
    return _exit(result)
