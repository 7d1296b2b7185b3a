"""hosttune status: the applied policy, when it was applied, and the journal's state. Reads only."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from agent.commands import tuning
from agent.commands.options import host_root_options, state_dir_options
from agent.render import print_json
from agent.tuning.api import status

EPILOG = """\
examples:
  hosttune status
  hosttune status --json
"""


def when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="applied policy and journal state",
                       description=__doc__, epilog=EPILOG, parents=[host_root_options(), state_dir_options()],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable status")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    st = status(tuning.state(args))
    if args.json:
        print_json(st)
        return 0
    if st.applied is not None:
        changed = sum(1 for c in st.applied.changes if c.action == "change" and not c.reboot_required)
        print(f"applied:   {st.applied.policy} at {when(st.applied.at)} ({st.applied.source or '-'}), "
              f"{len(st.applied.changes)} tunables, {changed} changed")
    else:
        print("applied:   nothing")
    txn = st.last_txn
    if txn is not None:
        print(f"last txn:  {txn.kind} {txn.id} {txn.status} at {when(txn.finished or txn.started)}"
              + (f" ({txn.error})" if txn.error else ""))
    if st.interrupted:
        print("journal:   INTERRUPTED transaction: the next apply or revert rolls it back first")
    print(f"originals: {st.originals} held for revert (state dir {st.state_dir})")
    return 0
