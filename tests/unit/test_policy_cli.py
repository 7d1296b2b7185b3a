"""`hosttune policy list|show|validate|schema`, and bad policies through the real CLI: exit 2, one line naming
file:line and field, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.cli import main
from agent.hostfs import HostPaths

HOSTTUNE = Path(sys.executable).parent / "hosttune"
REPO = Path(__file__).resolve().parents[2]

# (file name, YAML, expected line, expected field, words the message must contain)
BAD_POLICIES = [
    ("unknown-key.yaml", "name: x\nworker:\n  engine: llamacpp\n  thread: 4\n", 4, "worker.thread",
     ["unknown key 'thread'", "did you mean 'threads'"]),
    ("unknown-section.yaml", "name: x\nsysctls:\n  vm.swappiness: 1\n", 2, "sysctls", ["did you mean 'sysctl'"]),
    ("wrong-type.yaml", "name: x\nworker:\n  port: lots\n", 3, "worker.port", ["valid integer", "'lots'"]),
    ("wrong-type-list.yaml", "name: x\nsysctl:\n  vm.swappiness: [1, 2]\n", 3, "sysctl.vm.swappiness",
     ["valid integer", "valid string"]),
    ("traversal.yaml", 'name: x\nsysctl:\n  vm.swappiness: 1\n  "../../etc/x": 1\n', 4, "sysctl.../../etc/x",
     ["invalid sysctl key '../../etc/x'"]),
    ("slash.yaml", "name: x\nsysctl:\n  vm/swappiness: 1\n", 3, "sysctl.vm/swappiness", ["invalid sysctl key"]),
    ("negative-hugepages.yaml", "name: x\nhugepages:\n  - size: 2M\n    count: -5\n", 4, "hugepages.0.count",
     ["greater than or equal to 0", "-5"]),
    ("hugepage-size.yaml", "name: x\nhugepages:\n  - {size: 4M, count: 1}\n", 3, "hugepages.0.size", ["'2M'"]),
    ("bad-constraint.yaml", "name: x\nsysctl:\n  vm.max_map_count: '>=lots'\n", 3, "sysctl.vm.max_map_count",
     ["constraint"]),
    ("bool-sysctl.yaml", "name: x\nsysctl:\n  vm.swappiness: true\n", 3, "sysctl.vm.swappiness", ["0/1"]),
    ("yaml-syntax.yaml", "name: x\nsysctl:\n  vm.swappiness: 1\n   bad: indent\n", 4, None, ["YAML syntax error"]),
    ("unknown-fact.yaml", "name: x\ncpu:\n  when: gpus.count > 0 and cpufreq.avail\n  governor: performance\n", 3,
     "cpu.when", ["unknown fact 'cpufreq.avail'", "cpufreq.available"]),
    ("bad-expression.yaml", "name: x\nworker:\n  threads: '=cpu.cores //'\n", 3, "worker.threads",
     ["computed value", "expected a value"]),
    ("evil-expression.yaml", "name: x\nworker:\n  threads: '=__import__(\"os\")'\n", 3, "worker.threads",
     ["unknown function '__import__'"]),
    ("missing-parent.yaml", "name: x\nextends: no-such-policy\n", 2, "extends", ["'no-such-policy' not found"]),
    ("duplicate-key.yaml", "name: x\nthp:\n  enabled: never\n  enabled: always\n", 4, "enabled",
     ["duplicate key 'enabled'"]),
    ("command-no-argv.yaml", "name: x\nworker:\n  engine: command\n", 2, "worker", ["needs argv"]),
]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HOSTTUNE), *args], capture_output=True, text=True, timeout=120, check=False,
                          env=env, cwd=REPO)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and not p.is_symlink()}


@pytest.mark.parametrize(("name", "text", "line", "field", "words"), BAD_POLICIES, ids=[b[0] for b in BAD_POLICIES])
@pytest.mark.process
def test_bad_policy_exits_2_with_one_line(tmp_path: Path, host: HostPaths, cli_env: dict[str, str], name: str,
                                          text: str, line: int, field: str | None, words: list[str]) -> None:
    policy = tmp_path / name
    policy.write_text(text)
    tree = host.procfs.parent
    before = snapshot(tree)
    proc = run_cli("policy", "validate", str(policy), "--procfs", str(host.procfs), "--sysfs", str(host.sysfs),
                   "--rootfs", str(host.rootfs), env=cli_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1, proc.stderr  # one clear line, no traceback
    expected_prefix = f"hosttune: error: {policy}:{line}: " + (f"{field}: " if field else "")
    assert err[0].startswith(expected_prefix), err[0]
    for word in words:
        assert word in err[0]
    assert proc.stdout == ""
    assert snapshot(tree) == before  # validating wrote nothing to the host tree
    assert not Path(cli_env["HOSTTUNE_STATE_DIR"]).exists()


@pytest.mark.process
def test_extends_cycle_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nextends: b\n")
    (tmp_path / "b.yaml").write_text("name: b\nextends: a\n")
    proc = run_cli("policy", "validate", str(tmp_path / "a.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"hosttune: error: {tmp_path / 'b.yaml'}:2: extends: "
                                   "extends cycle: a.yaml -> b.yaml -> a.yaml")


def test_validate_many_files_reports_each_and_fails_if_any_fails(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: good\ncpu: {when: cpufreq.available, governor: performance}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nthp: {enabled: sometimes}\n")
    assert main(["policy", "validate", str(good), str(bad)]) == 2
    out, err = capsys.readouterr()
    assert f"ok: {good}: policy good (1 condition(s) not evaluated without facts)" in out
    assert err.count("hosttune: error:") == 1 and f"{bad}:2: thp.enabled:" in err
    assert main(["policy", "validate", "--json", str(good), str(bad)]) == 2
    results = json.loads(capsys.readouterr().out)
    assert [r["valid"] for r in results] == [True, False]
    assert results[0]["unevaluated_conditions"] == ["cpu"]
    assert results[1]["error"]["line"] == 2 and results[1]["error"]["field"] == "thp.enabled"


def test_list(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site-special.yaml").write_text("name: site-special\ndescription: ours\nextends: base\n")
    monkeypatch.setenv("HOSTTUNE_POLICY_PATH", str(tmp_path))
    assert main(["policy", "list", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert {"base", "llm-cpu-throughput", "llm-gpu-throughput", "llm-latency", "site-special"} <= set(listed)
    assert listed["site-special"] == {"name": "site-special", "path": str(tmp_path / "site-special.yaml"),
                                      "description": "ours", "extends": ["base"]}
    assert main(["policy", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "EXTENDS", "DESCRIPTION", "PATH"]
    assert any(line.startswith("site-special ") and "ours" in line for line in out.splitlines())


def test_show_offline_says_conditions_were_not_evaluated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "show", "llm-cpu-throughput"]) == 0
    out = capsys.readouterr().out
    assert "facts:  none" in out and "not evaluated" in out
    assert "conditions were checked but not evaluated" in out
    row = next(line for line in out.splitlines() if line.startswith("sysctl.vm.swappiness"))
    assert row.split()[1] == "1" and row.split()[2].endswith(f"base.yaml:{_line('base.yaml', 'vm.swappiness')}")
    threads_row = next(line for line in out.splitlines() if line.startswith("worker.threads_batch"))
    assert "=cpu.cores // cpu.numa_nodes.count" in threads_row and "needs facts" in threads_row


def _line(policy: str, needle: str) -> int:
    lines = (REPO / "policies" / policy).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line and not line.lstrip().startswith("#"))


def test_show_json_with_facts_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.policy_hosts import gpu_server

    facts_file = tmp_path / "facts.json"
    facts_file.write_text(gpu_server().model_dump_json())
    assert main(["policy", "show", "llm-gpu-throughput", "--json", "--facts", str(facts_file)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["facts"] == f"file {facts_file}"
    assert shown["policy"]["gpu"][0]["locked_clocks"] == "max"
    assert shown["policy"]["sysctl"]["kernel.numa_balancing"] == 0
    assert shown["computed"]["worker.gpu_layers"] == "999 if gpus.count > 0 else 0"
    assert shown["locations"]["sysctl.vm.swappiness"] == {
        "file": str(REPO / "policies" / "base.yaml"), "line": _line("base.yaml", "vm.swappiness")}
    assert all(c["result"] is not None for c in shown["conditions"])


def test_show_with_set_context(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent("""\
        name: p
        worker: {model: default}
        hugepages: [{size: 1G, count: "=ceil(model.size_bytes / 1Gi)"}]
    """))
    assert main(["policy", "show", str(p), "--json", "--set", "model.size_bytes=40Gi"]) == 0
    assert json.loads(capsys.readouterr().out)["policy"]["hugepages"][0]["count"] == 40
    assert main(["policy", "show", str(p), "--set", "novalue"]) == 2


def test_show_unknown_name_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "show", "llm-latncy"]) == 2
    assert "did you mean 'llm-latency'" in capsys.readouterr().err


def test_bad_facts_file_is_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "facts.json"
    bad.write_text('{"cpu": 1}')
    assert main(["policy", "show", "base", "--facts", str(bad)]) == 2
    assert f"{bad}: --facts: not HostFacts JSON" in capsys.readouterr().err


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "when" in schema["$defs"]["CpuSpec"]["properties"]
    assert "when" not in schema["properties"]  # not on the whole policy
    assert "name" not in schema.get("required", [])
    assert set(schema["properties"]) >= {"sysctl", "hugepages", "thp", "cpu", "block", "gpu", "worker", "slo"}


@pytest.mark.process
def test_policy_help_has_examples() -> None:
    proc = run_cli("policy", "--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "validate" in proc.stdout
    assert os.linesep.join(proc.stdout.splitlines()).count("hosttune policy") >= 4
