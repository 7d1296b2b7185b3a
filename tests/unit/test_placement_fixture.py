"""Placement and fit on the committed two-socket, eight-GPU fixture host (tests/fixtures/hosts/server-2s-8gpu):
its golden facts, its sysfs device tree, and the CLI run against its roots with the NVML simulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.inspect.models import HostFacts
from agent.policy.model import WorkerPlacement, WorkerSpec
from agent.worker.placement import plan_placement, whole_disk_of_file
from tests.support.worker_facts import write_gguf

SERVER = Path(__file__).resolve().parent.parent / "fixtures" / "hosts" / "server-2s-8gpu"


@pytest.fixture
def facts() -> HostFacts:
    golden = SERVER / "expected.json"
    if not golden.exists():
        pytest.skip("fixture host server-2s-8gpu not present")
    return HostFacts.model_validate_json(golden.read_text())


def node(facts: HostFacts, n: int) -> list[int]:
    return next(nd.cpus for nd in facts.cpu.numa_nodes if nd.id == n)


def cores(facts: HostFacts, cpus: list[int]) -> int:
    return len({min(g) for g in facts.cpu.smt_siblings if set(g) & set(cpus)})


def test_gpu_on_node_1_puts_the_worker_on_node_1(facts: HostFacts) -> None:
    gpus_on_1 = [g for g in facts.gpus if g.numa_node == 1]
    assert gpus_on_1, "the fixture has GPUs on node 1"
    gpu = gpus_on_1[0]
    p = plan_placement(facts, WorkerSpec(gpu=gpu.index, gpu_layers=99), model_disk="nvme0n1")
    assert p.node == 1 and p.cpus == sorted(node(facts, 1)) and p.membind
    assert p.threads == cores(facts, node(facts, 1)) == len(node(facts, 1)) // 2  # SMT siblings not counted
    assert p.gpu_uuid == gpu.uuid


def test_gpus_0_to_3_are_node_0(facts: HostFacts) -> None:
    for index in range(4):
        assert plan_placement(facts, WorkerSpec(gpu=index)).node == 0
    for index in range(4, 8):
        assert plan_placement(facts, WorkerSpec(gpu=index)).node == 1


def test_model_on_the_fixture_nvme1n1(facts: HostFacts, tmp_path: Path) -> None:
    """Graft the model file's real device number onto a copy of the fixture's /sys/dev/block, pointing at the
    fixture's own nvme1n1 partition-less disk, so the whole lookup runs over the fixture tree."""
    sysfs = tmp_path / "sys"
    shutil.copytree(SERVER / "sys", sysfs, symlinks=True)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    st = os.stat(model)
    link = sysfs / "dev" / "block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if link.exists() or link.is_symlink():
        link.unlink()
    target = (sysfs / "block" / "nvme1n1").resolve()
    link.symlink_to(os.path.relpath(target, link.parent))
    paths = HostPaths(procfs=SERVER / "proc", sysfs=sysfs, rootfs=tmp_path)
    assert whole_disk_of_file(paths, model) == "nvme1n1"
    p = plan_placement(facts, WorkerSpec(gpu_layers=0), model, paths=paths)
    assert p.node == 1 and p.cpus == sorted(node(facts, 1))


def test_invalid_explicit_cpus_on_the_fixture(facts: HostFacts) -> None:
    top = max(facts.cpu.online_cpus)
    with pytest.raises(InputError) as e:
        plan_placement(facts, WorkerSpec(placement=WorkerPlacement(mode="explicit", cpus=[0, top + 1])))
    assert e.value.field == "worker.placement.cpus" and str(top + 1) in e.value.message


@pytest.mark.process
def test_fit_cli_against_the_fixture_gpu(facts: HostFacts, tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "m.gguf")
    out = subprocess.run([sys.executable, "-m", "agent", "fit", str(model), "--json", "--device", "gpu:5",
                          "--procfs", str(SERVER / "proc"), "--sysfs", str(SERVER / "sys"),
                          "--nvml-sim", str(SERVER / "nvml.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    gpu5 = next(g for g in facts.gpus if g.index == 5)
    assert data["device"] == {"name": "gpu:5", "free_bytes": gpu5.memory_free_bytes,
                              "total_bytes": gpu5.memory_total_bytes}
    assert data["seed_rule_ok"] is True
