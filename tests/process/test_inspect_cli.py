"""`hosttune inspect` as a user meets it: bad input is one line naming the path with exit 2 (never a traceback),
--schema describes --json, the summary is readable, and the host-root options beat the environment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.inspect.models import HostFacts
from tests.support.inspect_cli import FIXTURE_HOSTS, clean_env, run_inspect, tree_args

LAPTOP = FIXTURE_HOSTS / "laptop-sata"
SERVER = FIXTURE_HOSTS / "server-2s-8gpu"


def copy_laptop(tmp_path: Path) -> Path:
    dest = tmp_path / "laptop"
    shutil.copytree(LAPTOP, dest, symlinks=True)
    return dest


def assert_one_line_error(proc_stderr: str, must_name: str) -> None:
    lines = proc_stderr.strip().splitlines()
    assert len(lines) == 1, proc_stderr
    assert lines[0].startswith("hosttune: error: ")
    assert must_name in lines[0]
    assert "Traceback" not in proc_stderr


@pytest.mark.parametrize("option", ["--procfs", "--sysfs", "--rootfs"])
def test_a_root_that_does_not_exist(tmp_path: Path, option: str) -> None:
    args = tree_args(LAPTOP)
    missing = tmp_path / "no-such-root"
    args[args.index(option) + 1] = str(missing)
    proc = run_inspect("--json", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, str(missing))


@pytest.mark.parametrize(("rel", "text", "where"), [
    ("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "lots\n", "nr_hugepages"),
    ("proc/meminfo", "MemTotal:       16000000 kB\nMemFree garbage\n", "proc/meminfo:2"),
    ("sys/devices/system/cpu/online", "0-seven\n", "cpu/online"),
    ("sys/kernel/mm/transparent_hugepage/enabled", "always madvise never\n", "transparent_hugepage/enabled"),
    ("sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda/queue/read_ahead_kb",
     "fast\n", "read_ahead_kb"),
])
def test_a_malformed_file_in_the_tree(tmp_path: Path, rel: str, text: str, where: str) -> None:
    root = copy_laptop(tmp_path)
    target = root / rel
    target.chmod(0o644)
    target.write_text(text)
    proc = run_inspect("--json", *tree_args(root))
    assert proc.returncode == 2, proc.stdout[:200]
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, where)
    assert str(root) in proc.stderr


def test_missing_nvml_sim_file(tmp_path: Path) -> None:
    args = [*tree_args(LAPTOP)[:6], "--nvml-sim", str(tmp_path / "gpus.json")]
    proc = run_inspect("--json", *args)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "gpus.json")


def test_schema_describes_every_top_level_key() -> None:
    schema = run_inspect("--schema")
    assert schema.returncode == 0
    doc = json.loads(schema.stdout)
    facts = run_inspect("--json", *tree_args(SERVER))
    out = json.loads(facts.stdout)
    assert set(doc["properties"]) == set(out)
    for key in ("cpu", "memory", "hugepages", "thp", "block_devices", "gpus", "gpu_status", "sysctl", "cpufreq",
                "conflicts", "kernel"):
        assert key in doc["required"], key
    assert HostFacts.model_validate(out).cpu.sockets == 2


def test_json_and_schema_are_exclusive() -> None:
    proc = run_inspect("--json", "--schema")
    assert proc.returncode == 2
    assert "not allowed with" in proc.stderr


def test_summary_tables() -> None:
    proc = run_inspect(*tree_args(SERVER))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for heading in ("CPU / NUMA", "Memory", "Block devices", "GPUs", "CPU frequency", "Other tuners", "Kernel"):
        assert f"\n{heading}\n" in text, heading
    assert "Intel(R) Xeon(R) Gold 6426Y: 2 socket(s), 32 cores, 64 threads, SMT on" in text
    node_rows = [line.split() for line in text.splitlines() if line.startswith(("0 ", "1 "))]
    assert node_rows[0][:2] == ["0", "0-15,32-47"] and node_rows[1][:2] == ["1", "16-31,48-63"]
    nvme1 = next(line.split() for line in text.splitlines() if line.startswith("nvme1n1 "))
    assert nvme1[1] == "nvme" and nvme1[5] == "1"  # kind and its NUMA node (size takes two columns)
    assert "tuned" in text and "irqbalance" in text


def test_summary_without_gpus_says_why() -> None:
    proc = run_inspect(*tree_args(LAPTOP))
    assert proc.returncode == 0
    gpus = proc.stdout.split("\nGPUs\n", 1)[1].splitlines()[0]
    assert gpus.startswith("none (") and "not found" in gpus.lower()
    assert "not applicable" not in proc.stdout.split("\nCPU frequency\n", 1)[1].splitlines()[0]


def test_environment_roots_and_option_precedence(tmp_path: Path) -> None:
    """HOSTTUNE_PROCFS/SYSFS/ROOTFS select a tree; an explicit option beats the variable."""
    env = clean_env(HOSTTUNE_PROCFS=str(SERVER / "proc"), HOSTTUNE_SYSFS=str(SERVER / "sys"),
                    HOSTTUNE_ROOTFS=str(SERVER), HOSTTUNE_NVML_SIM=str(LAPTOP / "nvml.json"))
    from_env = json.loads(run_inspect("--json", env=env).stdout)
    assert from_env["hostname"] == "gpu-server-01"
    assert from_env["gpus"] == []  # HOSTTUNE_NVML_SIM was honoured too
    mixed = run_inspect("--json", "--procfs", str(LAPTOP / "proc"), env=env)
    facts = json.loads(mixed.stdout)
    assert facts["hostname"] == "thinkpad"  # procfs from the option
    assert facts["cpu"]["sockets"] == 2  # sysfs still from the environment
    broken = run_inspect("--json", "--sysfs", str(tmp_path / "absent"), env=env)
    assert broken.returncode == 2 and str(tmp_path / "absent") in broken.stderr


def test_docs_name_every_field() -> None:
    """docs/inspect.md documents every field of the JSON: a field added to the models must be added there too."""
    docs = (Path(__file__).resolve().parents[2] / "docs/inspect.md").read_text()
    schema = HostFacts.model_json_schema()
    models = [schema, *schema["$defs"].values()]
    missing = sorted({f for m in models for f in m["properties"] if f"`{f}`" not in docs})
    assert missing == []
