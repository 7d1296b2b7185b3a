"""The worker's weights really in the hugepage pool, on the real kernel with the real engine: `hosttune daemon`
applies a policy whose 2 MiB pool is `for_weights`, stages the bundled GGUF in a hugetlbfs mount it owns and
supervises llama-server on the staged copy. Seen from the kernel: the worker's smaps_rollup shows Hugetlb covering
the weights, HugePages_Free dropped by the staged pages, a completion works; after stop there is no mount, no
file, and the pool is back to what it was (revert_on_stop). A daemon killed with SIGKILL leaves the mount and the
file behind; the next daemon start removes them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.bench.llama_local import free_port
from agent.hostfs import HostPaths
from agent.model_files import default_model_path
from agent.tuning.weights import STAGED_NAME, default_mount_dir, mounted_at
from tests.e2e.test_daemon_engine import EngineDaemon
from tests.support.daemon_fixtures import DaemonProcess, no_gpu_sim, write_config

pytestmark = [pytest.mark.root, pytest.mark.kernel, pytest.mark.engine, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount hugetlbfs and size the pool"),
              pytest.mark.skipif("hugetlbfs" not in Path("/proc/filesystems").read_text(),
                                 reason="this kernel has no hugetlbfs")]

LIVE = HostPaths.live()
MOUNT = default_mount_dir(LIVE)
POOL = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


def meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rollup(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    return {k.strip(): int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in lines)}


def staged_policy(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "weights.yaml"
    path.write_text(
        "name: kernel-weights-hugetlbfs\n"
        "hugepages:\n  - size: 2M\n    count: \"=ceil(model.size_bytes / 2Mi * 1.1)\"\n    for_weights: true\n"
        f"worker:\n  engine: llamacpp\n  port: {port}\n  parallel: 1\n  ctx: 2048\n  threads: 2\n"
        "  placement: {mode: none}\n  weights: {backing: hugetlbfs}\n")
    return path


def no_worker_policy(tmp_path: Path) -> Path:
    path = tmp_path / "empty.yaml"
    path.write_text("name: kernel-weights-none\n")
    return path


@pytest.fixture
def pool_restored() -> Iterator[str]:
    """The pool as found; put back (and our mount removed) whatever the test did."""
    before = POOL.read_text()
    assert mounted_at(MOUNT, LIVE) is None, f"{MOUNT} already mounted: another run is using it"
    yield before
    if mounted_at(MOUNT, LIVE) is not None:
        (MOUNT / STAGED_NAME).unlink(missing_ok=True)
        subprocess.run(["umount", "--lazy", str(MOUNT)], check=False, timeout=30)  # a failed test's leftover
    if MOUNT.is_dir():
        MOUNT.rmdir()
    POOL.write_text(before)


def start(tmp_path: Path, policy: Path) -> EngineDaemon:
    return EngineDaemon(tmp_path, policy, revert_on_stop=True)


def test_llama_server_maps_its_weights_from_the_pool_and_stop_gives_it_back(tmp_path: Path,
                                                                             pool_restored: str) -> None:
    gguf = default_model_path().stat().st_size
    d = start(tmp_path, staged_policy(tmp_path, free_port()))
    try:
        pid = d.get("/v1/worker")["pid"]
        assert str(MOUNT / STAGED_NAME) in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert mounted_at(MOUNT, LIVE) == "hugetlbfs"
        staged_pages = (MOUNT / STAGED_NAME).stat().st_size // (2 << 20)
        total, free = meminfo("HugePages_Total"), meminfo("HugePages_Free")
        assert total - free >= staged_pages, (total, free, staged_pages)
        r = httpx.post(f"{d.gateway_url}/v1/chat/completions", timeout=120,
                       json={"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
        smaps = rollup(pid)
        hugetlb = (smaps.get("Private_Hugetlb", 0) + smaps.get("Shared_Hugetlb", 0)) * 1024
        assert hugetlb >= 0.9 * gguf, smaps
    finally:
        code = d.proc.stop()
    assert code == 0, d.proc.output()
    assert mounted_at(MOUNT, LIVE) is None and not MOUNT.exists()
    assert POOL.read_text() == pool_restored
    assert not Path(f"/proc/{pid}").exists()


def test_a_killed_daemon_s_staged_weights_are_removed_at_the_next_start(tmp_path: Path,
                                                                        pool_restored: str) -> None:
    first = start(tmp_path, staged_policy(tmp_path, free_port()))
    pid = first.get("/v1/worker")["pid"]
    first.proc.signal(signal.SIGKILL)
    first.proc.proc.wait(10)
    first.proc.notify.close()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:  # the worker follows its parent
        time.sleep(0.1)
    assert mounted_at(MOUNT, LIVE) == "hugetlbfs" and (MOUNT / STAGED_NAME).exists()  # the orphan
    # the same state dir, a policy without worker: what this start cleans up is only the orphan
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    config = write_config(second_dir / "daemon.yaml", policy=str(no_worker_policy(tmp_path)),
                          state_dir=str(tmp_path / "state"), nvml_sim=str(no_gpu_sim(second_dir)), drift_check_s=0,
                          api={"port": 0}, gateway={"port": 0}, revert_on_stop=True)
    second = DaemonProcess(config, second_dir)
    try:
        second.wait_ready(timeout_s=120)
        assert mounted_at(MOUNT, LIVE) is None and not MOUNT.exists()
        assert any("removed orphaned staged weights" in s for s in second.notify.statuses()), second.output()
    finally:
        assert second.stop() == 0, second.output()
    assert POOL.read_text() == pool_restored
