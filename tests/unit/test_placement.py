"""Placement on a two-socket, eight-GPU server and on a one-node VM: GPU first, then the model's disk, then free
memory; explicit CPUs/nodes validated; threads = physical cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.policy.model import WorkerPlacement, WorkerSpec
from agent.worker.placement import physical_cores, plan_placement, queue_disk_of_file, whole_disk_of_file
from tests.support.worker_facts import GiB, one_node_vm, two_socket_server

NODE0 = [0, 1, 2, 3, 8, 9, 10, 11]
NODE1 = [4, 5, 6, 7, 12, 13, 14, 15]


def fake_sysfs_for(tmp: Path, file: Path, device_dir: str, partition: bool = True) -> HostPaths:
    """A sysfs tree where the file's real st_dev resolves to `device_dir` (a disk or one of its partitions)."""
    st = os.stat(file)
    sysfs = tmp / "sys"
    dev = sysfs / device_dir
    dev.mkdir(parents=True)
    if partition:
        (dev / "partition").write_text("1\n")
    link = sysfs / "dev" / "block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(dev, link.parent))
    return HostPaths(procfs=tmp / "proc", sysfs=sysfs, rootfs=tmp)


def test_gpu_on_node_1_places_worker_on_node_1_cores() -> None:
    facts = two_socket_server(node0_free=400 * GiB, node1_free=10 * GiB)  # free memory would say node 0
    p = plan_placement(facts, WorkerSpec(gpu=5, gpu_layers=99), model_disk="nvme0n1")  # so would the disk
    assert p.node == 1 and p.cpus == NODE1 and p.membind
    assert p.threads == 4  # 4 physical cores, SMT siblings not counted
    assert p.gpu == 5 and p.gpu_uuid is not None and p.gpu_uuid.startswith("GPU-00000005")
    assert any("GPU 5" in r for r in p.reasons)


def test_default_gpu_is_gpu_0_on_node_0() -> None:
    p = plan_placement(two_socket_server(node0_free=1 * GiB, node1_free=300 * GiB), WorkerSpec())
    assert p.node == 0 and p.cpus == NODE0 and p.gpu == 0


def test_model_on_nvme1_places_cpu_worker_on_node_1(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    paths = fake_sysfs_for(tmp_path, model, "devices/pci0000:80/0000:80:01.0/nvme/nvme1/nvme1n1/nvme1n1p2")
    assert whole_disk_of_file(paths, model) == "nvme1n1"
    facts = two_socket_server(node0_free=400 * GiB, node1_free=10 * GiB)
    p = plan_placement(facts, WorkerSpec(gpu_layers=0), model, paths=paths)
    assert p.node == 1 and p.cpus == NODE1 and p.gpu is None
    assert any("nvme1n1" in r for r in p.reasons)


def test_device_mapper_follows_its_slave(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    paths = fake_sysfs_for(tmp_path, model, "devices/virtual/block/dm-0", partition=False)
    part = tmp_path / "sys/devices/pci0000:00/0000:00:02.0/nvme/nvme0/nvme0n1/nvme0n1p3"
    part.mkdir(parents=True)
    (part / "partition").write_text("3\n")
    (tmp_path / "sys/devices/virtual/block/dm-0/slaves").mkdir()
    (tmp_path / "sys/devices/virtual/block/dm-0/slaves/nvme0n1p3").symlink_to(
        os.path.relpath(part, tmp_path / "sys/devices/virtual/block/dm-0/slaves"))
    assert whole_disk_of_file(paths, model) == "nvme0n1"   # placement: the physical disk
    assert queue_disk_of_file(paths, model) == "dm-0"       # readahead: file reads use dm-0's own queue


def test_queue_disk_of_a_partition_is_its_whole_disk(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    paths = fake_sysfs_for(tmp_path, model, "devices/pci0000:80/0000:80:01.0/nvme/nvme1/nvme1n1/nvme1n1p2")
    assert queue_disk_of_file(paths, model) == "nvme1n1"
    assert queue_disk_of_file(HostPaths(procfs=tmp_path, sysfs=tmp_path / "nosys", rootfs=tmp_path), model) is None


def test_file_without_block_device(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    empty = HostPaths(procfs=tmp_path, sysfs=tmp_path / "nosys", rootfs=tmp_path)
    assert whole_disk_of_file(empty, model) is None
    p = plan_placement(two_socket_server(node0_free=10 * GiB, node1_free=99 * GiB), WorkerSpec(gpu_layers=0),
                       model, paths=empty)
    assert p.node == 1  # falls through to the node with most free memory
    assert any("most free memory" in r for r in p.reasons)


def test_node_that_cannot_hold_the_model_is_skipped() -> None:
    facts = two_socket_server(node0_free=2 * GiB, node1_free=100 * GiB)
    p = plan_placement(facts, WorkerSpec(gpu_layers=0), model_disk="nvme0n1", model_bytes=40 * GiB)
    assert p.node == 1
    assert any("cannot hold the model" in r for r in p.reasons)


def test_explicit_cpus_honoured_and_node_inferred() -> None:
    p = plan_placement(two_socket_server(), WorkerSpec(placement=WorkerPlacement(mode="explicit", cpus=[5, 6, 13])))
    assert p.cpus == [5, 6, 13] and p.node == 1 and p.membind
    assert p.threads == 2  # 5 and 13 share a core


def test_explicit_cpus_across_nodes_are_not_memory_bound() -> None:
    p = plan_placement(two_socket_server(), WorkerSpec(placement=WorkerPlacement(mode="explicit", cpus=[0, 4])))
    assert p.node is None and not p.membind and p.cpus == [0, 4]


@pytest.mark.parametrize("cpus", [[99], [0, 16], []])
def test_invalid_cpus_rejected(cpus: list[int]) -> None:
    with pytest.raises(InputError) as e:
        plan_placement(two_socket_server(), WorkerSpec(placement=WorkerPlacement(mode="explicit", cpus=cpus)))
    assert e.value.field == "worker.placement.cpus"


def test_invalid_node_rejected() -> None:
    with pytest.raises(InputError) as e:
        plan_placement(two_socket_server(), WorkerSpec(placement=WorkerPlacement(numa_node=2)))
    assert e.value.field == "worker.placement.numa_node"


def test_explicit_node() -> None:
    p = plan_placement(two_socket_server(), WorkerSpec(placement=WorkerPlacement(numa_node=1), threads=3))
    assert p.node == 1 and p.cpus == NODE1 and p.threads == 3


def test_explicit_mode_needs_something() -> None:
    with pytest.raises(InputError) as e:
        plan_placement(two_socket_server(), WorkerSpec(placement=WorkerPlacement(mode="explicit")))
    assert e.value.field == "worker.placement"


def test_unknown_gpu_rejected() -> None:
    with pytest.raises(InputError) as e:
        plan_placement(two_socket_server(), WorkerSpec(gpu=8))
    assert e.value.field == "worker.gpu"


def test_mode_none_is_not_pinned() -> None:
    p = plan_placement(two_socket_server(), WorkerSpec(gpu_layers=0, placement=WorkerPlacement(mode="none")))
    assert p.node is None and not p.membind and p.cpus == [] and not p.bound and p.threads == 8
    assert "not pinned" in p.summary()


def test_one_node_vm() -> None:
    p = plan_placement(one_node_vm(), WorkerSpec(), model_disk="vda")
    assert p.node == 0 and p.cpus == [0, 1] and p.threads == 2 and p.gpu is None
    assert any("only NUMA node" in r for r in p.reasons)
    assert any("vda has no known NUMA node" in r for r in p.reasons)


def test_physical_cores_counts_sibling_groups() -> None:
    facts = two_socket_server()
    assert physical_cores(facts, NODE0) == 4
    assert physical_cores(facts, [0]) == 1
    assert physical_cores(facts, [0, 8, 1]) == 2
