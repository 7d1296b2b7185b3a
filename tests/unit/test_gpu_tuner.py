"""GPU tuner through the engine, NVML simulated at the C-function level under the real pynvml binding.

Plan (validation, unsupported, not applicable), apply (journaled, read back), verify, revert; NO_PERMISSION and
GPU_IS_LOST roll the transaction back; the read-only (dry-run) session is honoured; kill -9 mid-apply followed
by revert (separate processes, simulator state on disk) puts every GPU back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from agent.errors import HostError, InputError
from agent.gpu import nvml
from agent.gpu.ledger import ledger_path, read_ledger
from agent.gpu.simulator import library as nvml_sim
from agent.hostfs import HostPaths
from agent.policy.model import ClockRange, GpuSelect, GpuSpec, Policy
from agent.tuners.gpu import GpuTuner
from agent.tuning.api import apply_policy, plan_policy, revert, verify
from agent.tuning.state import StateDir
from tests.support.gpu_sim import H200, H200_GRAPHICS, description, h100

BOOT_ID = "0d6c3b0e-1111-4222-8333-444455556666"


@pytest.fixture(autouse=True)
def _fresh_nvml() -> Iterator[None]:
    yield
    nvml_sim.uninstall()


@pytest.fixture
def paths(tmp_path: Path) -> HostPaths:
    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
    (tmp_path / "sys").mkdir()
    return HostPaths(procfs=tmp_path / "proc", sysfs=tmp_path / "sys", rootfs=tmp_path)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state")


def two_gpus(**top: Any) -> nvml_sim.NvmlSimulator:
    """GPU 0: H200 (persistence off, idle at 345 MHz); GPU 1: H100 SXM5 (persistence on)."""
    return nvml_sim.install(description(H200, h100(1, "9A"), **top))


def policy(*specs: GpuSpec) -> Policy:
    return Policy(name="gpu-test", gpu=list(specs))


THROUGHPUT = GpuSpec(locked_clocks="max", memory_locked_clocks="max", power_limit_w="90%", persistence_mode=True)


def by_target(changes: list[Any]) -> dict[str, Any]:
    return {c.target: c for c in changes}


# --- plan ---------------------------------------------------------------------------------------------------


def test_plan_resolves_every_setting_per_gpu(paths: HostPaths) -> None:
    two_gpus()
    changes = by_target(GpuTuner().plan(policy(THROUGHPUT), None, paths))
    assert set(changes) == {f"gpu{i}/{s}" for i in (0, 1) for s in
                            ("locked_clocks", "memory_locked_clocks", "power_limit_w", "persistence_mode")}
    assert changes["gpu0/locked_clocks"].value == "1980-1980"
    assert changes["gpu0/memory_locked_clocks"].value == "3201-3201"
    assert changes["gpu1/memory_locked_clocks"].value == "2619-2619"
    assert changes["gpu0/power_limit_w"].value == "630 W"        # 90% of the 700 W default
    assert changes["gpu0/power_limit_w"].current == "700 W"
    assert changes["gpu0/persistence_mode"].current == "disabled"
    assert changes["gpu0/persistence_mode"].action == "change"
    assert changes["gpu1/persistence_mode"].action == "ok"         # the H100 already has it on
    assert changes["gpu0/locked_clocks"].current.startswith("not recorded (SM 345 MHz")
    assert changes["gpu0/locked_clocks"].field == "gpu.0.locked_clocks"
    assert all(c.tuner == "gpu" for c in changes.values())


def test_percentage_snaps_down_to_a_supported_clock(paths: HostPaths) -> None:
    two_gpus()
    (c,) = GpuTuner().plan(policy(GpuSpec(select=GpuSelect(index=0), locked_clocks="90%")), None, paths)
    expected = max(mhz for mhz in H200_GRAPHICS if mhz <= 0.9 * 1980)
    assert c.value == f"{expected}-{expected}" and expected != int(0.9 * 1980)


def test_base_uses_the_tdp_clock(paths: HostPaths) -> None:
    two_gpus()
    (c,) = GpuTuner().plan(policy(GpuSpec(select=GpuSelect(index=0), locked_clocks="base")), None, paths)
    assert c.value == "base"


@pytest.mark.parametrize("spec, field", [
    (GpuSpec(locked_clocks=ClockRange(min_mhz=300, max_mhz=1980)), "gpu.0.locked_clocks"),
    (GpuSpec(locked_clocks=ClockRange(min_mhz=1200, max_mhz=2100)), "gpu.0.locked_clocks"),
    (GpuSpec(locked_clocks="fast"), "gpu.0.locked_clocks"),
    (GpuSpec(locked_clocks="120%"), "gpu.0.locked_clocks"),
    (GpuSpec(memory_locked_clocks="base"), "gpu.0.memory_locked_clocks"),
    (GpuSpec(power_limit_w=800), "gpu.0.power_limit_w"),
    (GpuSpec(power_limit_w=150), "gpu.0.power_limit_w"),
    (GpuSpec(power_limit_w="20%"), "gpu.0.power_limit_w"),   # 140 W, under the 200 W floor
    (GpuSpec(power_limit_w="lots"), "gpu.0.power_limit_w"),
])
def test_values_outside_what_the_gpu_supports_are_bad_input(paths: HostPaths, spec: GpuSpec, field: str) -> None:
    sim = two_gpus()
    with pytest.raises(InputError) as err:
        GpuTuner().plan(policy(spec), None, paths)
    assert err.value.field == field
    assert not [c for c in sim.calls if nvml.is_mutating(c)]


def test_what_the_gpu_cannot_do_is_unsupported(paths: HostPaths) -> None:
    old = dict(H200, architecture=4, not_supported=["nvmlDeviceGetPowerManagementLimitConstraints"])  # Pascal
    nvml_sim.install(description(old))
    changes = by_target(GpuTuner().plan(policy(THROUGHPUT), None, paths))
    assert changes["gpu0/locked_clocks"].action == "unsupported"
    assert "Volta" in changes["gpu0/locked_clocks"].reason
    assert changes["gpu0/memory_locked_clocks"].action == "unsupported"
    assert changes["gpu0/power_limit_w"].action == "unsupported"
    assert "Not Supported" in changes["gpu0/power_limit_w"].reason
    assert changes["gpu0/persistence_mode"].action == "change"


def test_no_nvml_is_not_applicable(paths: HostPaths) -> None:
    nvml_sim.install({"library": "missing"})
    (c,) = GpuTuner().plan(policy(THROUGHPUT), None, paths)
    assert c.action == "not_applicable" and "library not found" in c.reason.lower()


def test_select_by_name_uuid_index_later_entry_wins(paths: HostPaths) -> None:
    two_gpus()
    specs = [GpuSpec(power_limit_w=500),                                     # all
             GpuSpec(select=GpuSelect(name="*h100*"), power_limit_w=400),    # glob, case-insensitive
             GpuSpec(select=GpuSelect(uuid=H200["uuid"]), persistence_mode=True),
             GpuSpec(select=GpuSelect(index=7), persistence_mode=True)]      # no such GPU
    changes = by_target(GpuTuner().plan(policy(*specs), None, paths))
    power0, power1 = changes["gpu0/power_limit_w"], changes["gpu1/power_limit_w"]
    assert (power0.value, power0.field) == ("500 W", "gpu.0.power_limit_w")
    assert (power1.value, power1.field) == ("400 W", "gpu.1.power_limit_w")
    assert "gpu0/persistence_mode" in changes and "gpu1/persistence_mode" not in changes
    assert changes["select.3"].action == "not_applicable" and changes["select.3"].field == "gpu.3.select"


# --- apply, verify, revert through the engine ---------------------------------------------------------------


def test_apply_verify_plan_again_revert(paths: HostPaths, state: StateDir) -> None:
    sim = two_gpus()
    before = [sim.state_of(0), sim.state_of(1)]
    result = apply_policy(policy(THROUGHPUT), paths, state)
    assert result.writes == 7  # gpu0: all 4 settings; gpu1: both locks and power (persistence is already on)
    s0, s1 = sim.state_of(0), sim.state_of(1)
    assert s0["gpu_locked_clocks"] == [1980, 1980] and s0["memory_locked_clocks"] == [3201, 3201]
    assert s0["power_limit_mw"] == 630000 and s0["persistence_mode"] == 1
    assert s1["gpu_locked_clocks"] == [1980, 1980] and s1["memory_locked_clocks"] == [2619, 2619]
    assert s1["power_limit_mw"] == 630000 and s1["persistence_mode"] == 1
    # the locks are recorded in the ledger, keyed by UUID, under this boot's id
    ledger = ledger_path(paths)
    assert BOOT_ID in ledger.name
    assert read_ledger(ledger)[H200["uuid"]] == {"locked_clocks": "1980-1980", "memory_locked_clocks": "3201-3201"}

    checked = verify(state)
    assert checked.ok, checked.items
    assert {i.state for i in checked.items} == {"held"}

    again = plan_policy(policy(THROUGHPUT), paths, state=state)
    assert [c.target for c in again.changes if c.action == "change"] == []  # idempotent

    reverted = revert(state)
    assert reverted.ok and not reverted.failed
    assert [sim.state_of(0), sim.state_of(1)] == before
    assert read_ledger(ledger) == {}


def test_verify_sees_a_power_limit_changed_behind_its_back(paths: HostPaths, state: StateDir) -> None:
    two_gpus()
    apply_policy(policy(GpuSpec(select=GpuSelect(index=0), power_limit_w=450)), paths, state)
    pynvml.nvmlInit()
    pynvml.nvmlDeviceSetPowerManagementLimit(pynvml.nvmlDeviceGetHandleByIndex(0), 500000)
    pynvml.nvmlShutdown()
    (item,) = verify(state).items
    assert (item.state, item.expected, item.current) == ("drift", "450 W", "500 W")


def test_no_permission_rolls_back_and_says_why(paths: HostPaths, state: StateDir) -> None:
    sim = two_gpus(root=False)
    with pytest.raises(HostError) as err:
        apply_policy(policy(THROUGHPUT), paths, state)
    assert "needs root" in str(err.value) and "error 4" in str(err.value)
    assert "rolled back 1 writes" in str(err.value)  # the refused lock: nothing to undo, no second refusal
    assert sim.state_of(0)["persistence_mode"] == 0 and sim.state_of(0)["power_limit_mw"] == 700000
    assert state.journal().data.txn is not None and state.journal().data.txn.status == "rolled_back"
    assert state.journal().data.originals == []


def test_lost_gpu_rolls_back_what_was_set_on_the_others(paths: HostPaths, state: StateDir) -> None:
    lost_on_set = dict(h100(1, "9A"), errors={"nvmlDeviceSetGpuLockedClocks": 15})
    sim = nvml_sim.install(description(H200, lost_on_set))
    with pytest.raises(HostError) as err:
        apply_policy(policy(GpuSpec(locked_clocks="max", power_limit_w=600)), paths, state)
    assert "gpu1/locked_clocks" in str(err.value) and "fell off the bus" in str(err.value)
    assert sim.state_of(0)["gpu_locked_clocks"] is None and sim.state_of(0)["power_limit_mw"] == 700000
    # the rollback used the reset call for the lock and the v1 setter for the recorded power limit
    mutating = [c for c in sim.calls if nvml.is_mutating(c)]
    assert "nvmlDeviceResetGpuLockedClocks" in mutating and "nvmlDeviceSetPowerManagementLimit_v2" not in mutating
    assert read_ledger(ledger_path(paths)) == {}


def test_dry_run_session_is_honoured(paths: HostPaths, state: StateDir, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = two_gpus()
    monkeypatch.setenv(nvml.ENV_DRY_RUN, "1")  # every session this process opens is read-only
    plan = plan_policy(policy(THROUGHPUT), paths, state=state)
    assert plan.counts()["change"] == 7
    with pytest.raises(HostError, match="read-only"):
        apply_policy(policy(THROUGHPUT), paths, state)
    assert not [c for c in sim.calls if nvml.is_mutating(c)]
    assert state.journal().data.originals == []


def test_second_apply_with_a_new_lock_rolls_back_to_the_first(paths: HostPaths, state: StateDir) -> None:
    sim = nvml_sim.install(description(H200, dict(h100(1, "9A"), errors={"nvmlDeviceSetPowerManagementLimit": 15})))
    first = GpuSpec(select=GpuSelect(index=0), locked_clocks=ClockRange(min_mhz=1200, max_mhz=1800))
    apply_policy(policy(first), paths, state)
    assert sim.state_of(0)["gpu_locked_clocks"] == [1200, 1800]
    second = [GpuSpec(select=GpuSelect(index=0), locked_clocks="max"),
              GpuSpec(select=GpuSelect(index=1), power_limit_w=600)]    # fails: GPU 1 is lost
    with pytest.raises(HostError):
        apply_policy(policy(*second), paths, state)
    assert sim.state_of(0)["gpu_locked_clocks"] == [1200, 1800]          # back to the first policy's lock
    revert(state)
    assert sim.state_of(0)["gpu_locked_clocks"] is None                  # and revert resets it


# --- kill -9 in the middle of an apply, then revert in another process --------------------------------------


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.process
def test_kill_9_mid_apply_then_revert_resets_what_was_set(tmp_path: Path, host: HostPaths) -> None:
    """The real CLI on a whole fixture host tree (the unit conftest's server), NVML simulated from a file."""
    paths = host
    desc = tmp_path / "nvml.json"
    desc.write_text(json.dumps(description(H200, h100(1, "9A"))))
    sim_state = tmp_path / "nvml-state.json"
    policy_file = tmp_path / "gpu.yaml"
    policy_file.write_text("name: gpu-crash\ngpu:\n  - select: {all: true}\n    locked_clocks: max\n"
                           "    power_limit_w: 500\n    persistence_mode: true\n")
    env = {**os.environ, "HOSTTUNE_NVML_SIM": str(desc), "HOSTTUNE_NVML_SIM_STATE": str(sim_state),
           "HOSTTUNE_STATE_DIR": str(tmp_path / "state")}
    env.pop("HOSTTUNE_NVML_DRY_RUN", None)
    roots = ["--procfs", str(paths.procfs), "--sysfs", str(paths.sysfs), "--rootfs", str(paths.rootfs)]

    crashed = _cli(["apply", str(policy_file), *roots], {**env, "HOSTTUNE_CRASH_AFTER_WRITES": "4"})
    assert crashed.returncode == -9, crashed.stderr
    after_crash = json.loads(sim_state.read_text())["gpus"]
    changed = [u for u, s in after_crash.items() if s["gpu_locked_clocks"] or s["power_limit_mw"] != 700000]
    assert changed, "the crash came after some GPU writes"
    journal = json.loads((tmp_path / "state/journal.json").read_text())
    assert journal["txn"]["status"] == "open" and len(journal["txn"]["writes"]) == 4

    reverted = _cli(["revert", *roots], env)
    assert reverted.returncode == 0, reverted.stderr
    final = json.loads(sim_state.read_text())["gpus"]
    assert final[H200["uuid"]] == {"gpu_locked_clocks": None, "memory_locked_clocks": None,
                                   "power_limit_mw": 700000, "persistence_mode": 0, "compute_mode": 0}
    assert final[h100(1, "9A")["uuid"]]["gpu_locked_clocks"] is None
    assert final[h100(1, "9A")["uuid"]]["power_limit_mw"] == 700000
    assert final[h100(1, "9A")["uuid"]]["persistence_mode"] == 1


def test_an_absurd_power_limit_is_bad_input_not_a_crash(paths: HostPaths) -> None:
    """power_limit_w: 10**400 overflowed float division in the tuner's message (OverflowError: a traceback on the
    CLI, a 500 from the API). The policy model bounds watts; the tuner's message no longer divides to float."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="less than or equal to"):
        GpuSpec(power_limit_w=10**400)
    two_gpus()
    with pytest.raises(InputError) as err:  # a spec built without validation still gets bad input, not a crash
        GpuTuner().plan(policy(GpuSpec.model_construct(select=GpuSelect(all=True), power_limit_w=10**400,
                                                       locked_clocks=None, memory_locked_clocks=None,
                                                       persistence_mode=None)), None, paths)
    assert err.value.field == "gpu.0.power_limit_w"
