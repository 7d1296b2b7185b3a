"""Engine adapters: llama-server argv from the spec and placement, the command engine, refused inputs; and the
binding prefix, exercised for real through the exec shim (affinity and memory policy as the kernel reports them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import InputError
from agent.policy.model import WorkerSpec
from agent.worker.binding import plan_binding
from agent.worker.engines import CommandEngine, LlamaCppEngine, engine_for
from agent.worker.llamacpp_bin import LlamaServerBinary
from agent.worker.placement import Placement, plan_placement
from tests.support.worker_facts import two_socket_server

BINARY = LlamaServerBinary(path=Path("/opt/llama/bin/llama-server"), lib_dir=Path("/opt/llama/lib"))
MODEL = Path("/models/m.gguf")


def flags(argv: list[str]) -> dict[str, str | None]:
    """'-c 4096 --metrics' -> {'-c': '4096', '--metrics': None}."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("-"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else None
            out[argv[i]] = value
            i += 2 if value is not None else 1
        else:
            i += 1
    return out


def test_llamacpp_argv_maps_every_knob() -> None:
    spec = WorkerSpec(port=9001, threads=6, threads_batch=8, ctx=8192, parallel=4, batch=1024, ubatch=256,
                      cache_type_k="q8_0", cache_type_v="q4_0", gpu_layers=99, flash_attn=True,
                      extra_args=["--no-webui"])
    argv = LlamaCppEngine(BINARY).argv(spec, MODEL, None)
    f = flags(argv)
    assert f["-m"] == str(MODEL) and f["--host"] == "127.0.0.1" and f["--port"] == "9001"
    assert "--metrics" in f
    assert (f["-t"], f["-tb"], f["-c"], f["-np"], f["-b"], f["-ub"]) == ("6", "8", "8192", "4", "1024", "256")
    assert (f["-ctk"], f["-ctv"], f["-ngl"], f["-fa"]) == ("q8_0", "q4_0", "99", "on")
    assert "--numa" not in f and argv[-1] == "--no-webui"


def test_llamacpp_unset_knobs_keep_engine_defaults_and_placement_sets_threads() -> None:
    placement = plan_placement(two_socket_server(), WorkerSpec(gpu=6))
    argv = LlamaCppEngine(BINARY).argv(WorkerSpec(flash_attn=False), MODEL, placement)
    f = flags(argv)
    assert f["-t"] == "4" and f["--numa"] == "numactl" and f["-fa"] == "off"
    for absent in ("-c", "-np", "-b", "-ub", "-ctk", "-ctv", "-ngl", "-tb"):
        assert absent not in f


def test_launch_binds_and_selects_the_gpu() -> None:
    placement = plan_placement(two_socket_server(), WorkerSpec(gpu=6, gpu_layers=99))
    launch = LlamaCppEngine(BINARY, prefer_binding="bindexec").launch(WorkerSpec(gpu=6, gpu_layers=99), MODEL,
                                                                      placement)
    assert launch.argv[:4] == [sys.executable, "-P", "-m", "agent.worker.bindexec"]
    head = launch.argv[:launch.argv.index("--")]
    assert head[head.index("--cpus") + 1] == "4-7,12-15" and head[head.index("--membind") + 1] == "1"
    assert launch.argv[launch.argv.index("--") + 1] == str(BINARY.path)
    assert launch.env["CUDA_VISIBLE_DEVICES"] == placement.gpu_uuid
    assert launch.env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == "/opt/llama/lib"
    assert launch.health_url == "http://127.0.0.1:8081/health" and str(launch.metrics_url).endswith("/metrics")
    assert launch.placement == placement and launch.binding.mechanism == "bindexec"


def test_ipv6_host_url() -> None:
    launch = LlamaCppEngine(BINARY).launch(WorkerSpec(host="::1", port=9), MODEL, None)
    assert launch.base_url == "http://[::1]:9"


@pytest.mark.parametrize("arg", ["--port", "-c", "--ctx-size=4096", "-m", "--numa"])
def test_reserved_flags_in_extra_args_refused(arg: str) -> None:
    with pytest.raises(InputError) as e:
        LlamaCppEngine(BINARY).argv(WorkerSpec(extra_args=["--no-webui", arg, "1"]), MODEL, None)
    assert e.value.field == "worker.extra_args[1]"


def test_bad_cache_type_and_ubatch() -> None:
    with pytest.raises(InputError) as e:
        LlamaCppEngine(BINARY).argv(WorkerSpec(cache_type_k="q3_k"), MODEL, None)
    assert e.value.field == "worker.cache_type_k"
    with pytest.raises(InputError) as e:
        LlamaCppEngine(BINARY).argv(WorkerSpec(batch=128, ubatch=512), MODEL, None)
    assert e.value.field == "worker.ubatch"


def test_every_knob_needs_a_restart() -> None:
    eng = LlamaCppEngine(BINARY)
    old = WorkerSpec(ctx=4096, parallel=4)
    assert eng.restart_needed(old, old.model_copy(update={"parallel": 8, "cache_type_k": "q8_0"})) == [
        "cache_type_k", "parallel"]
    assert eng.restart_needed(old, old) == []


def test_command_engine() -> None:
    spec = WorkerSpec(engine="command", argv=["/usr/bin/my-server", "--listen", "9"], port=9,
                      health_url="http://127.0.0.1:9/ready", metrics_url="http://127.0.0.1:9/m")
    launch = CommandEngine(parent_death_signal=None).launch(spec, None, None)
    assert launch.argv == spec.argv and launch.health_url.endswith("/ready") and str(launch.metrics_url).endswith("/m")
    default = CommandEngine(parent_death_signal=None).launch(WorkerSpec(engine="command", argv=["x"], port=7), None,
                                                             None)
    assert default.health_url == "http://127.0.0.1:7/health" and default.metrics_url is None


def test_torch_engine_is_registered() -> None:
    # the torch adapter itself is tested in tests/unit/test_torch_engine.py
    assert engine_for(WorkerSpec(engine="torch")).name == "torch"


def placement(cpus: list[int], node: int | None) -> Placement:
    return Placement(node=node, cpus=cpus, threads=len(cpus), membind=node is not None)


def test_binding_prefers_numactl_when_installed(tmp_path: Path) -> None:
    b = plan_binding(placement([4, 5, 6], 1), numactl="/usr/bin/numactl")
    assert b.mechanism == "numactl"
    assert b.prefix == ["/usr/bin/numactl", "--physcpubind=4-6", "--membind=1", "--"]
    guarded = plan_binding(placement([4], 1), numactl="/usr/bin/numactl", parent_death_signal=15)
    assert guarded.prefix[:4] == [sys.executable, "-P", "-m", "agent.worker.bindexec"]
    assert guarded.prefix[guarded.prefix.index("--") + 1] == "/usr/bin/numactl"
    assert plan_binding(None).mechanism == "none" and plan_binding(None).prefix == []


def run_bound(prefix: list[str], *cmd: str) -> str:
    out = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.skipif(not Path("/proc/self/numa_maps").exists(), reason="kernel without NUMA support")
@pytest.mark.process
def test_bindexec_really_binds_cpu_and_memory() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    b = plan_binding(placement([cpus[-1]], 0), prefer="bindexec", parent_death_signal=15)
    assert b.mechanism == "bindexec"
    # the shim execs in place: `cat` reads its own /proc/self files, with the binding already in force
    status = run_bound(b.prefix, "/bin/cat", "/proc/self/status")
    assert re.search(rf"^Cpus_allowed_list:\s*{cpus[-1]}$", status, re.M)
    numa_maps = run_bound(b.prefix, "/bin/cat", "/proc/self/numa_maps")
    assert numa_maps and all(" bind:0" in ln for ln in numa_maps.splitlines())


@pytest.mark.process
def test_bindexec_reports_an_impossible_binding() -> None:
    out = subprocess.run([sys.executable, "-m", "agent.worker.bindexec", "--cpus", "4095", "--", "/bin/true"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 126 and "cannot bind" in out.stderr
    out = subprocess.run([sys.executable, "-m", "agent.worker.bindexec", "--", "/nonexistent/server"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 127 and "/nonexistent/server" in out.stderr


@pytest.mark.skipif(shutil.which("numactl") is None, reason="numactl not installed (scripts/install-system-deps.sh)")
@pytest.mark.process
def test_numactl_binding_really_binds_under_the_death_signal_shim() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    b = plan_binding(placement([cpus[0]], 0), parent_death_signal=15)
    assert b.mechanism == "numactl"
    status = run_bound(b.prefix, "/bin/cat", "/proc/self/status")
    assert re.search(rf"^Cpus_allowed_list:\s*{cpus[0]}$", status, re.M)
    numa_maps = run_bound(b.prefix, "/bin/cat", "/proc/self/numa_maps")
    assert numa_maps and all(" bind:0" in ln for ln in numa_maps.splitlines())
