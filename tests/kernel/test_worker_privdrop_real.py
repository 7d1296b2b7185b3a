"""A real worker under the real supervisor, started by root, as the kernel sees it: the worker user's uid and gid,
no supplementary groups, every capability set empty, no_new_privs, and only allow-listed environment keys; the
supervisor (root) still stops it across the uid boundary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.worker.privdrop import ENV_KEYS
from tests.support.dropped_worker import running_dropped_http_worker

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def test_worker_runs_as_the_worker_user_with_no_capabilities_and_a_scrubbed_env(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTTUNE_TOKEN_FILE", "/var/lib/hosttune/api.token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-worker")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with running_dropped_http_worker() as (sup, run_as, pid):
        st = proc_status(pid)
        ids = (str(run_as.uid),) * 4, (str(run_as.gid),) * 4
        assert (tuple(st["Uid"].split()), tuple(st["Gid"].split())) == ids
        assert st["Groups"] == ""
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[cap], 16) == 0, (cap, st[cap])
        assert st["NoNewPrivs"] == "1"
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        keys = {e.split(b"=", 1)[0].decode() for e in environ if e}
        assert keys <= ENV_KEYS | {"OMP_NUM_THREADS"} and "OMP_NUM_THREADS" in keys and "PATH" in keys
    status = sup.status()
    assert status.state == "stopped" and not Path(f"/proc/{pid}").exists()
