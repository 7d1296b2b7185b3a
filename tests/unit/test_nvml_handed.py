"""NVML is handed to the tuners: the tuning engine's GPU tuner plans, applies, verifies and reverts through the
session its caller opened (the daemon's; the CLI's --nvml-sim one) and never opens a second one of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.gpu import nvml
from agent.gpu.nvml import open_nvml
from agent.gpu.simulator import library as nvml_sim
from agent.hostfs import HostPaths
from agent.policy.model import GpuSpec, Policy
from agent.tuners import gpu as gpu_tuner
from agent.tuners.gpu import GpuTuner
from agent.tuners.registry import TunerSet
from agent.tuning import api
from agent.tuning.hotplug import tune_disk
from agent.tuning.state import StateDir
from agent.tuning.writer import HostWriter
from tests.support.daemon_fixtures import services_for
from tests.support.gpu_sim import SERVER_8GPU

GPUS = 8  # the simulated GPUs of the server-2s-8gpu fixture host
POLICY = Policy(name="gpu-handed", gpu=[GpuSpec(locked_clocks="max", power_limit_w="90%", persistence_mode=True)])


@pytest.fixture(autouse=True)
def _fresh_nvml() -> Iterator[None]:
    yield
    nvml_sim.uninstall()


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[GpuTuner]:
    """Every GpuTuner the engine builds, in order; any other NVML session opened meanwhile fails the test."""
    def second_session(*args: Any, **kwargs: Any) -> nvml.Nvml:
        raise AssertionError("a second NVML session was opened")

    monkeypatch.setattr(nvml, "open_nvml", second_session)
    monkeypatch.setattr(gpu_tuner, "open_nvml", second_session)
    out: list[GpuTuner] = []
    real: Callable[[type[GpuTuner], nvml.Nvml | None], GpuTuner] = GpuTuner.build.__func__  # type: ignore[attr-defined]

    def build(cls: type[GpuTuner], handed: nvml.Nvml | None) -> GpuTuner:
        tuner = real(cls, handed)
        out.append(tuner)
        return tuner

    monkeypatch.setattr(GpuTuner, "build", classmethod(build))
    return out


def _recording(session: nvml.Nvml, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The NVML functions called through `session` from now on."""
    calls: list[str] = []
    real = session.call

    def call(fn: Callable[..., Any] | str, *args: Any) -> Any:
        calls.append(nvml.function_name(fn))
        return real(fn, *args)

    monkeypatch.setattr(session, "call", call)
    return calls


def _bare_host(tmp_path: Path) -> HostPaths:
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys").mkdir()
    return HostPaths(procfs=tmp_path / "proc", sysfs=tmp_path / "sys", rootfs=tmp_path)


def _gpu_states() -> list[dict[str, Any]]:
    sim = nvml_sim.installed()
    assert sim is not None
    return [sim.state_of(i) for i in range(GPUS)]


def test_every_engine_operation_uses_the_session_it_was_handed(tmp_path: Path, built: list[GpuTuner],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    session = open_nvml(SERVER_8GPU)
    calls = _recording(session, monkeypatch)
    before = _gpu_states()
    paths = _bare_host(tmp_path)
    state = StateDir(tmp_path / "state")

    plan = api.plan_policy(POLICY, paths, state=state, nvml=session)
    assert {c.target.split("/")[0] for c in plan.changes if c.tuner == "gpu"} == {f"gpu{i}" for i in range(GPUS)}
    result = api.apply_policy(POLICY, paths, state, nvml=session)
    assert result.writes >= GPUS
    assert _gpu_states() != before
    assert [c for c in calls if nvml.is_mutating(c)], "the writes went through the handed session"
    assert api.verify(state, nvml=session).ok
    assert api.revert(state, nvml=session).ok
    assert _gpu_states() == before
    # one GPU tuner per operation (plan, apply, verify, revert), each holding the caller's session
    assert len(built) == 4
    assert all(t.nvml is session for t in built)


def test_a_hot_plugged_disk_rolls_back_an_interrupted_gpu_apply_through_the_handed_session(
        tmp_path: Path, built: list[GpuTuner]) -> None:
    session = open_nvml(SERVER_8GPU)
    before = _gpu_states()
    paths = _bare_host(tmp_path)
    state = StateDir(tmp_path / "state")
    with state.locked() as journal:  # a process that died after three GPU writes, before its commit
        plan = api.plan_policy(POLICY, paths, nvml=session)
        journal.begin("apply", policy=POLICY.name)
        writer, tuners = HostWriter(journal), TunerSet(session)
        for change in plan.writes[:3]:
            tuners.get(change.tuner).apply(change, writer)
    assert _gpu_states() != before
    built.clear()
    assert tune_disk(POLICY, paths, state, "nvme1n1", facts=None, source=None, nvml=session) is None
    assert _gpu_states() == before and state.journal().open_txn is None
    assert len(built) == 1 and built[0].nvml is session


@pytest.mark.usefixtures("no_daemon_env_overrides")
def test_the_daemon_hands_its_session_to_the_tuning_engine(host: HostPaths, tmp_path: Path,
                                                           built: list[GpuTuner]) -> None:
    tuning = services_for(host, tmp_path, nvml_sim=SERVER_8GPU).tuning
    session = tuning.nvml()
    policy = tmp_path / "gpu.yaml"
    policy.write_text("name: gpu-handed\ngpu:\n  - locked_clocks: max\n    power_limit_w: 90%\n")
    loaded = tuning.load_policy_ref(policy)
    plan = tuning.plan_loaded(loaded)
    assert {c["target"] for c in plan["changes"] if c["tuner"] == "gpu"} == {
        f"gpu{i}/{s}" for i in range(GPUS) for s in ("locked_clocks", "power_limit_w")}
    assert tuning.apply_loaded(loaded)["changed"] >= GPUS
    assert tuning.verify()["ok"]
    assert tuning.revert()["ok"]
    assert built and all(t.nvml is session for t in built)


def test_the_cli_hands_its_nvml_sim_session_to_the_tuning_engine(host: HostPaths, tmp_path: Path,
                                                                 built: list[GpuTuner],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    opened: list[nvml.Nvml] = []

    def for_nvml_sim(sim: Path | str | None = None, *, dry_run: bool = False) -> nvml.Nvml:
        assert sim is not None, "a session other than the --nvml-sim one was opened"
        session = open_nvml(sim, dry_run=dry_run)
        opened.append(session)
        return session

    monkeypatch.setattr(nvml, "open_nvml", for_nvml_sim)  # the GPU tuner's own opening still fails (`built`)
    policy = tmp_path / "gpu.yaml"
    policy.write_text("name: gpu-handed\ngpu:\n  - power_limit_w: 90%\n    persistence_mode: true\n")
    common = ["--procfs", str(host.procfs), "--sysfs", str(host.sysfs), "--rootfs", str(host.rootfs),
              "--state-dir", str(tmp_path / "state"), "--nvml-sim", str(SERVER_8GPU)]
    assert main(["apply", str(policy), *common]) == 0
    assert main(["verify", *common]) == 0
    assert main(["revert", *common]) == 0
    assert "reverted" in capsys.readouterr().out
    # one session per command, opened for --nvml-sim, and the GPU tuner of that command holds it
    assert len(opened) == len(built) == 3
    assert all(t.nvml is session for t, session in zip(built, opened, strict=True))
