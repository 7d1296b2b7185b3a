"""The daemon reads its worker's smaps_rollup as it runs under systemd/hosttune.service: root without
CAP_SYS_PTRACE (the unit's CapabilityBoundingSet) and /proc mounted `hidepid=invisible` (ProtectProc=invisible),
the worker under the worker user. A direct open fails there (the worker is invisible); opening it with the worker's
filesystem uid/gid (agent/worker/fsident.py, needing only CAP_SETUID/CAP_SETGID, which the unit grants) works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dropped_worker import running_dropped_http_worker

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges and mount a procfs"),
              pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("setpriv")),
                                 reason="needs unshare and setpriv (util-linux)")]
ROOT = Path(__file__).resolve().parents[2]
CAP_SYS_PTRACE = 19

# In a private mount namespace: a fresh procfs with hidepid=invisible over /proc, then exec (through setpriv, with
# CAP_SYS_PTRACE out of the bounding set, so root's exec gets no CAP_SYS_PTRACE) the reader below.
MOUNT_THEN_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.mount(b"proc", b"/proc", b"proc", 0, b"hidepid=invisible") != 0:
    sys.exit("mount proc: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""
READER = """
import json, sys
from agent.hostfs import HostPaths
from agent.worker.smaps import read_worker_memory
pid, uid, gid = (int(a) for a in sys.argv[1:4])
status = dict(ln.split(":", 1) for ln in open("/proc/self/status").read().splitlines())
opts = [ln.split()[3] for ln in open("/proc/self/mounts") if ln.split()[1] == "/proc"][-1]  # the top one
try:
    open(f"/proc/{pid}/smaps_rollup").read()
    direct = "ok"
except OSError as e:
    direct = type(e).__name__
mem = read_worker_memory(HostPaths.live(), pid, uid, gid)
print(json.dumps({"cap_eff": int(status["CapEff"], 16), "proc_opts": opts, "direct": direct,
                  "as_worker": mem.model_dump()}))
"""


# The unit's CapabilityBoundingSet, and the same without CAP_SYS_ADMIN (on this kernel CAP_SYS_ADMIN, like
# CAP_PERFMON or CAP_SYS_PTRACE, passes procfs's PTRACE_MODE_READ check by itself: measured with setpriv).
UNIT_CAPS = "-all,+sys_admin,+setuid,+setgid,+kill"
WITHOUT_SYS_ADMIN = "-all,+setuid,+setgid,+kill"


def read_restricted(pid: int, uid: int, gid: int, caps: str) -> dict[str, object]:
    """READER's findings from a root process with bounding set `caps` and /proc mounted hidepid=invisible."""
    argv = ["unshare", "-m", "--propagation", "private", sys.executable, "-c", MOUNT_THEN_EXEC,
            shutil.which("setpriv") or "setpriv", "--bounding-set", caps, "--inh-caps", "-all",
            "--", sys.executable, "-c", READER, str(pid), str(uid), str(gid)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    got: dict[str, object] = json.loads(out.stdout)
    assert not int(str(got["cap_eff"])) & (1 << CAP_SYS_PTRACE)
    assert "hidepid=invisible" in str(got["proc_opts"])
    return got


def test_the_daemon_reads_the_workers_smaps_rollup_under_the_units_proc_and_capabilities() -> None:
    with running_dropped_http_worker() as (sup, run_as, pid):
        mem = sup.status().memory  # the supervisor's own reading, in this (unrestricted) namespace
        assert mem is not None and mem.error is None and mem.pid == pid and (mem.rss_bytes or 0) > 0
        unit = read_restricted(pid, run_as.uid, run_as.gid, UNIT_CAPS)
        bare = read_restricted(pid, run_as.uid, run_as.gid, WITHOUT_SYS_ADMIN)
    for got in (unit, bare):  # the fs-identity read works with the unit's capabilities and with less
        seen = got["as_worker"]
        assert isinstance(seen, dict) and seen["error"] is None and seen["pid"] == pid and seen["rss_bytes"] > 0
    assert unit["direct"] == "ok"  # CAP_SYS_ADMIN alone passes the check here
    assert bare["direct"] in ("FileNotFoundError", "PermissionError")  # without it the worker is invisible
