"""Policy loading: extends and merge, null deletes, `when`, computed values, locations, search path."""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.model_files import default_model_path
from agent.policy.loader import (
    default_policy_name,
    find_policy,
    list_policies,
    load_policy,
    policy_search_path,
)
from tests.support.policy_hosts import ci_vm, gpu_server, laptop


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line containing `needle` (located by the test, not by the loader)."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in {path}")


@pytest.fixture
def family(tmp_path: Path) -> Path:
    write(tmp_path / "base.yaml", """
        name: base
        description: the base
        sysctl:
          vm.swappiness: 60
          vm.max_map_count: ">=1048576"
          kernel.numa_balancing: 0
        thp: {enabled: madvise, defrag: defer+madvise}
        hugepages:
          - {size: 2M, count: 8}
          - {size: 1G, count: 1}
        cpu: {governor: performance}
        worker:
          engine: llamacpp
          parallel: 2
          extra_args: ["--mlock"]
    """)
    write(tmp_path / "child.yaml", """
        extends: base
        sysctl:
          vm.swappiness: 1
          kernel.numa_balancing: null
        thp:
          defrag: null
        hugepages:
          - {size: 2M, count: 16}
        cpu: null
        worker:
          parallel: 4
    """)
    return tmp_path


def test_merge_child_wins_lists_replaced_null_deletes(family: Path) -> None:
    loaded = load_policy(family / "child.yaml", search_path=[])
    pol = loaded.policy
    assert pol.sysctl == {"vm.swappiness": 1, "vm.max_map_count": ">=1048576"}  # numa_balancing deleted
    assert pol.thp is not None and pol.thp.enabled == "madvise" and pol.thp.defrag is None
    assert [(h.size, h.count) for h in pol.hugepages] == [("2M", 16)]  # the child's list replaces the base's
    assert pol.cpu is None  # whole section deleted
    assert pol.worker is not None and pol.worker.parallel == 4 and pol.worker.extra_args == ["--mlock"]
    assert pol.name == "child"  # no name: the file's stem, never the parent's name
    assert pol.description is None  # descriptions are not inherited either
    assert loaded.chain == [family / "base.yaml", family / "child.yaml"]


def test_locations_name_the_file_and_line_of_each_final_value(family: Path) -> None:
    loaded = load_policy(family / "child.yaml", search_path=[])
    base, child = family / "base.yaml", family / "child.yaml"
    assert loaded.locations["sysctl.vm.swappiness"] == (child, line_of(child, "vm.swappiness"))
    assert loaded.locations["sysctl.vm.max_map_count"] == (base, line_of(base, "vm.max_map_count"))
    assert loaded.locations["hugepages.0.count"] == (child, line_of(child, "count: 16"))
    assert loaded.locations["worker.extra_args"] == (base, line_of(base, "extra_args"))
    assert loaded.where("worker.extra_args.0") == (base, line_of(base, "extra_args"))
    # A field set nowhere falls back to its section's location; a field under no section has none.
    assert loaded.where("worker.port") == (child, line_of(child, "worker:"))
    assert loaded.where("gpu.0.locked_clocks") is None


def test_diamond_merges_each_file_once_in_depth_first_order(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "name: base\nsysctl: {vm.swappiness: 60, vm.dirty_ratio: 20}\n")
    write(tmp_path / "b.yaml", "name: b\nextends: base\nsysctl: {vm.swappiness: 5}\n")
    write(tmp_path / "c.yaml", "name: c\nextends: base\nsysctl: {vm.dirty_ratio: 10}\n")
    write(tmp_path / "a.yaml", "name: a\nextends: [b, c]\n")
    loaded = load_policy(tmp_path / "a.yaml", search_path=[])
    assert [p.name for p in loaded.chain] == ["base.yaml", "b.yaml", "c.yaml", "a.yaml"]
    # base is not merged again after b, so b's override survives c.
    assert loaded.policy.sysctl == {"vm.swappiness": 5, "vm.dirty_ratio": 10}
    assert loaded.policy.extends == ["b", "c"]


def test_extends_by_relative_path(tmp_path: Path) -> None:
    write(tmp_path / "site/common.yaml", "name: common\nsysctl: {vm.swappiness: 7}\n")
    write(tmp_path / "hosts/web.yaml", "name: web\nextends: ../site/common.yaml\n")
    assert load_policy(tmp_path / "hosts/web.yaml", search_path=[]).policy.sysctl == {"vm.swappiness": 7}


def test_a_policy_can_extend_the_shipped_policy_of_the_same_name(tmp_path: Path) -> None:
    shipped = write(tmp_path / "shipped/base.yaml", "name: base\nsysctl: {vm.swappiness: 1, vm.dirty_ratio: 20}\n")
    local = write(tmp_path / "etc/base.yaml", "name: base\nextends: base\nsysctl: {vm.dirty_ratio: 5}\n")
    dirs = [tmp_path / "etc", tmp_path / "shipped"]
    loaded = load_policy("base", search_path=dirs)
    assert loaded.source == local and loaded.chain == [shipped, local]
    assert loaded.policy.sysctl == {"vm.swappiness": 1, "vm.dirty_ratio": 5}


def test_extends_cycle_names_the_loop_and_line(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "name: a\nextends: b\n")
    write(tmp_path / "b.yaml", "name: b\n# comment\nextends: a\n")
    with pytest.raises(InputError) as e:
        load_policy(tmp_path / "a.yaml", search_path=[])
    assert "cycle" in e.value.message and "a.yaml -> b.yaml -> a.yaml" in e.value.message
    assert (e.value.path, e.value.line, e.value.field) == (str(tmp_path / "b.yaml"), 3, "extends")


def test_path_cycle_and_missing_parent(tmp_path: Path) -> None:
    write(tmp_path / "self.yaml", "name: self\nextends: ./self.yaml\n")
    with pytest.raises(InputError, match="cycle"):
        load_policy(tmp_path / "self.yaml", search_path=[])
    write(tmp_path / "orphan.yaml", "name: orphan\nextends: nowhere\n")
    with pytest.raises(InputError) as e:
        load_policy(tmp_path / "orphan.yaml", search_path=[])
    assert "'nowhere' not found" in e.value.message and e.value.line == 2 and e.value.field == "extends"


# ---------------------------------------------------------------- when


@pytest.fixture
def conditional(tmp_path: Path) -> Path:
    write(tmp_path / "base.yaml", """
        name: base
        cpu: {governor: schedutil}
    """)
    return write(tmp_path / "cond.yaml", """
        name: cond
        extends: base
        sysctl:
          vm.swappiness: 1
          kernel.numa_balancing: {value: 0, when: "cpu.numa_nodes.count >= 2"}
        cpu:
          when: cpufreq.available
          governor: performance
        gpu:
          - when: gpus.count > 0
            locked_clocks: max
          - when: false
            persistence_mode: true
        thp:
          when: "thp.available and memory.total_bytes >= 64Gi"
          enabled: madvise
    """)


def test_when_false_drops_and_the_inherited_value_stays(conditional: Path) -> None:
    pol = load_policy(conditional, ci_vm(), search_path=[]).policy  # 1 node, no cpufreq, no GPU, 24 GiB
    assert pol.sysctl == {"vm.swappiness": 1}
    assert pol.cpu is not None and pol.cpu.governor == "schedutil"  # the child's section never happened
    assert pol.gpu == []
    assert pol.thp is None


def test_when_true_keeps(conditional: Path) -> None:
    loaded = load_policy(conditional, gpu_server(), search_path=[])  # 2 nodes, cpufreq, 8 GPUs, 1 TiB
    pol = loaded.policy
    assert pol.sysctl == {"vm.swappiness": 1, "kernel.numa_balancing": 0}
    assert pol.cpu is not None and pol.cpu.governor == "performance"
    assert [g.locked_clocks for g in pol.gpu] == ["max"]
    assert pol.thp is not None and pol.thp.enabled == "madvise"
    assert {c.field: c.result for c in loaded.conditions} == {
        "sysctl.kernel.numa_balancing": True, "cpu": True, "gpu.0": True, "gpu.1": False, "thp": True}
    assert loaded.facts_used


def test_offline_conditions_are_checked_and_sections_kept(conditional: Path) -> None:
    loaded = load_policy(conditional, None, search_path=[])
    assert not loaded.facts_used
    assert loaded.policy.cpu is not None and loaded.policy.cpu.governor == "performance"
    assert loaded.policy.sysctl["kernel.numa_balancing"] == 0
    assert len(loaded.policy.gpu) == 1  # the constant `when: false` is still applied
    unevaluated = sorted(c.field for c in loaded.conditions if c.result is None)
    assert unevaluated == ["cpu", "gpu.0", "sysctl.kernel.numa_balancing", "thp"]


@pytest.mark.parametrize("facts", [None, ci_vm()], ids=["offline", "facts"])
def test_unknown_fact_is_an_error_even_when_short_circuited(tmp_path: Path, facts: object) -> None:
    p = write(tmp_path / "p.yaml", """
        name: p
        cpu:
          when: "gpus.count > 9 and cpu.numa_nodse.count > 1"
          governor: performance
    """)
    with pytest.raises(InputError) as e:
        load_policy(p, facts, search_path=[])  # type: ignore[arg-type]
    assert "unknown fact 'cpu.numa_nodse'" in e.value.message and "cpu.numa_nodes" in e.value.message
    assert (e.value.line, e.value.field) == (3, "cpu.when")


@pytest.mark.parametrize(("cond", "message"), [
    ('"cpu.cores"', "gave number"),
    ("[1]", "must be a condition"),
    ('"cpu.cores >"', "expected a value"),
])
def test_bad_conditions(tmp_path: Path, cond: str, message: str) -> None:
    p = write(tmp_path / "p.yaml", f"name: p\ncpu:\n  governor: performance\n  when: {cond}\n")
    with pytest.raises(InputError) as e:
        load_policy(p, ci_vm(), search_path=[])
    assert message in e.value.message and e.value.line == 4


def test_missing_fact_on_this_host_reads_as_null(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", """
        name: p
        sysctl:
          vm.a: {value: 1, when: "numa.node1.cores > 4"}
          vm.b: {value: 1, when: "gpus.0.memory_total_bytes == null"}
          vm.c: {value: 1, when: "sysctl.vm.not_there == null and int(sysctl.vm.swappiness) == 60"}
    """)
    assert load_policy(p, ci_vm(), search_path=[]).policy.sysctl == {"vm.b": 1, "vm.c": 1}
    assert load_policy(p, gpu_server(), search_path=[]).policy.sysctl == {"vm.a": 1, "vm.c": 1}


def test_conditional_entry_needs_value(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", "name: p\nsysctl:\n  vm.swappiness: {when: 'true', val: 1}\n")
    with pytest.raises(InputError) as e:
        load_policy(p, ci_vm(), search_path=[])
    assert "unknown key 'val'" in e.value.message and e.value.field == "sysctl.vm.swappiness"


def test_when_on_the_whole_policy_is_refused(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", "name: p\nwhen: gpus.count > 0\n")
    with pytest.raises(InputError, match="sections and list items"):
        load_policy(p, ci_vm(), search_path=[])


# ---------------------------------------------------------------- computed values


def test_computed_values_from_facts_and_model(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", """
        name: p
        hugepages:
          - size: 2M
            count: "=ceil(model.size_bytes / 2Mi * 1.1)"
        worker:
          model: default
          threads: "=numa.node0.cores"
          threads_batch: "=cpu.cores // cpu.sockets"
          ctx: "=4096 * max(1, gpus.count)"
          flash_attn: "=gpus.count > 0"
    """)
    model_size = os.stat(default_model_path()).st_size
    for facts in (ci_vm(), gpu_server(), laptop()):
        loaded = load_policy(p, facts, search_path=[])
        pol = loaded.policy
        assert pol.hugepages[0].count == math.ceil(model_size * 1.1 / (2 << 20))
        node0 = set(facts.cpu.numa_nodes[0].cpus)
        assert pol.worker is not None
        assert pol.worker.threads == len({min(g) for g in facts.cpu.smt_siblings if node0 & set(g)})
        assert pol.worker.threads_batch == facts.cpu.cores // facts.cpu.sockets
        assert pol.worker.ctx == 4096 * max(1, len(facts.gpus))
        assert pol.worker.flash_attn is bool(facts.gpus)
        assert loaded.computed["worker.threads"] == "numa.node0.cores"
        assert loaded.where("worker.threads") == (p, line_of(p, "threads:"))
    assert load_policy(p, gpu_server(), search_path=[]).policy.worker.threads == 32  # type: ignore[union-attr]


def test_context_overrides_the_model(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", "name: p\nworker: {model: /nonexistent.gguf}\n"
                                   "hugepages: [{size: 1G, count: '=ceil(model.size_bytes / 1Gi)'}]\n")
    loaded = load_policy(p, ci_vm(), search_path=[], context={"model.size_bytes": 70 << 30})
    assert loaded.policy.hugepages[0].count == 70


def test_model_names_need_a_resolvable_model(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", "name: p\nworker:\n  model: /nonexistent.gguf\n"
                                   "hugepages: [{size: 2M, count: '=model.size_bytes // 2Mi'}]\n")
    with pytest.raises(InputError) as e:
        load_policy(p, ci_vm(), search_path=[])
    assert (e.value.line, e.value.field) == (3, "worker.model") and "not found" in e.value.message
    # Offline the value is only deferred: a fleet's CI may validate policies without the model file.
    assert load_policy(p, None, search_path=[]).deferred == {"hugepages.0.count": "model.size_bytes // 2Mi"}
    q = write(tmp_path / "q.yaml", "name: q\nhugepages: [{size: 2M, count: '=model.size_bytes // 2Mi'}]\n")
    with pytest.raises(InputError, match="needs a `worker:` section"):
        load_policy(q, ci_vm(), search_path=[])


def test_offline_computed_values_are_deferred_with_a_valid_stand_in(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", "name: p\nworker:\n  ctx: '=cpu.cores * 1024'\n  threads: '=cpu.cores'\n")
    loaded = load_policy(p, None, search_path=[])
    assert loaded.deferred == {"worker.ctx": "cpu.cores * 1024", "worker.threads": "cpu.cores"}
    assert loaded.policy.worker is not None and loaded.policy.worker.ctx == 64  # ctx's lower bound


def test_computed_result_is_validated_and_located(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", "name: p\nworker:\n  engine: llamacpp\n  threads: '=cpu.cores - 100'\n")
    with pytest.raises(InputError) as e:
        load_policy(p, ci_vm(), search_path=[])
    assert (e.value.line, e.value.field) == (4, "worker.threads")
    assert "greater than or equal to 1" in e.value.message and "computed from '=cpu.cores - 100'" in e.value.message


def test_child_plain_value_replaces_inherited_expression(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "name: base\nworker: {threads: '=cpu.cores // 0'}\n")
    p = write(tmp_path / "c.yaml", "name: c\nextends: base\nworker: {threads: 3}\n")
    assert load_policy(p, ci_vm(), search_path=[]).policy.worker.threads == 3  # type: ignore[union-attr]


def test_sysctl_constraints_are_not_expressions(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", "name: p\nsysctl: {vm.max_map_count: '>=1048576', vm.x: '<=5'}\n")
    loaded = load_policy(p, ci_vm(), search_path=[])
    assert loaded.policy.sysctl == {"vm.max_map_count": ">=1048576", "vm.x": "<=5"} and not loaded.computed


# ---------------------------------------------------------------- YAML-level refusals


@pytest.mark.parametrize(("text", "line", "message"), [
    ("name: p\nsysctl:\n  vm.swappiness: 1\n  vm.swappiness: 2\n", 4, "duplicate key 'vm.swappiness'"),
    ("name: p\nkernel_cmdline:\n  on: x\n", 3, "reads it as a boolean"),
    ("name: p\nsysctl:\n  1: 2\n", 3, "must be a string"),
    ("name: p\nthp: !!python/object:os.system {}\n", 2, "unsupported YAML tag"),
    ("name: p\ndescription: !!python/name:os.system ''\n", 2, "cannot read value"),
    ("name: p\nsysctl: {vm.x: 1\n", None, "YAML syntax error"),
    ("- a\n- b\n", 1, "must be a mapping"),
    ("", 1, "empty"),
    ("name: p\nbase: &b {x: 1}\nthp:\n  <<: *b\n", 4, "merge keys"),
    ("name: p\nsysctl: {vm.x: .inf}\n", 2, "finite"),
])
def test_yaml_refusals(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_policy(p, None, search_path=[])
    assert message in e.value.message
    if line is not None:
        assert e.value.line == line
    assert e.value.path == str(p)


def test_alias_bomb_and_recursive_alias_are_refused(tmp_path: Path) -> None:
    lines = ["name: p", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="more than"):
        load_policy(bomb, None, search_path=[])
    loop = tmp_path / "loop.yaml"
    loop.write_text("name: p\nthp: &t\n  x: *t\n")
    with pytest.raises(InputError, match="nested more than"):
        load_policy(loop, None, search_path=[])


def test_deep_nesting_and_big_and_binary_files_are_refused(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: p\nthp: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(InputError, match="deep"):
        load_policy(deep, None, search_path=[])
    big = tmp_path / "big.yaml"
    big.write_text("name: p\ndescription: '" + "x" * (2 << 20) + "'\n")
    with pytest.raises(InputError, match="limit"):
        load_policy(big, None, search_path=[])
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: p\n\xff\xfe\n")
    with pytest.raises(InputError) as e:
        load_policy(binary, None, search_path=[])
    assert "UTF-8" in e.value.message and e.value.line == 2


# ---------------------------------------------------------------- finding policies


def test_search_path_order_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTTUNE_POLICY_PATH", f"{tmp_path / 'one'}:{tmp_path / 'two'}")
    dirs = policy_search_path()
    assert dirs[:2] == [tmp_path / "one", tmp_path / "two"]
    assert Path("/etc/hosttune/policies") in dirs
    assert any((d / "base.yaml").is_file() for d in dirs)  # the repo's shipped policies are found


def test_list_and_find_with_shadowing(tmp_path: Path) -> None:
    write(tmp_path / "one/mine.yaml", "name: mine\ndescription: first\n")
    write(tmp_path / "two/mine.yaml", "name: mine\ndescription: second\n")
    write(tmp_path / "two/other.yml", "name: other\nextends: mine\n")
    write(tmp_path / "two/broken.yaml", "name: [\n")
    dirs = [tmp_path / "one", tmp_path / "two", tmp_path / "missing"]
    infos = {i.name: i for i in list_policies(dirs)}
    assert sorted(infos) == ["broken", "mine", "other"]
    assert infos["mine"].description == "first" and infos["mine"].path == tmp_path / "one/mine.yaml"
    assert infos["other"].extends == ["mine"]
    assert "unreadable" in (infos["broken"].description or "")
    assert find_policy("other", dirs) == tmp_path / "two/other.yml"
    with pytest.raises(InputError, match="did you mean 'other'"):
        find_policy("othre", dirs)
    with pytest.raises(InputError, match="not found"):
        find_policy(str(tmp_path / "nope.yaml"), dirs)


def test_default_policy_name() -> None:
    assert default_policy_name(ci_vm()) == "llm-cpu-throughput"
    assert default_policy_name(None) == "llm-cpu-throughput"
    assert default_policy_name(gpu_server()) == "llm-gpu-throughput"


def test_when_on_a_free_form_section_guards_the_whole_section(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", """
        name: p
        sysctl:
          when: "numa.count >= 2"
          vm.zone_reclaim_mode: 0
        kernel_cmdline:
          when: gpus.count > 0
          iommu: pt
          nosmt: null
    """)
    on_vm = load_policy(p, ci_vm(), search_path=[]).policy
    assert on_vm.sysctl == {} and on_vm.kernel_cmdline == {}
    on_server = load_policy(p, gpu_server(), search_path=[]).policy
    assert on_server.sysctl == {"vm.zone_reclaim_mode": 0}
    assert on_server.kernel_cmdline == {"iommu": "pt", "nosmt": None}  # a null with nothing to delete is a flag


def test_bad_boot_parameters_are_refused(tmp_path: Path) -> None:
    p = write(tmp_path / "p.yaml", "name: p\nkernel_cmdline:\n  iommu: pt\n  isolcpus: 1-3 init=/bin/sh\n")
    with pytest.raises(InputError) as e:
        load_policy(p, None, search_path=[])
    assert (e.value.line, e.value.field) == (4, "kernel_cmdline.isolcpus") and "one printable token" in e.value.message


def test_a_huge_base60_number_is_refused_fast(tmp_path: Path) -> None:
    """YAML 1.1 reads `1:1:1:...` as a base-60 integer, which PyYAML builds with one bignum multiplication per
    part: quadratic, about 4 s of CPU (holding the GIL) for a 256 KiB API body and a minute for a 1 MiB file.
    A number no policy needs (over 100 characters) is refused before it is converted."""
    import time

    from agent.policy.loader import load_policy_text

    text = "name: sexagesimal\nsysctl:\n  vm.swappiness: 1" + ":1" * 120_000 + "\n"
    started = time.monotonic()
    with pytest.raises(InputError, match="longer than 100 characters") as err:
        load_policy_text(text, tmp_path / "body.yaml", search_path=[])
    assert err.value.line == 3
    assert time.monotonic() - started < 1.0
