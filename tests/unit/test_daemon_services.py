"""The daemon's parts as the runner and the routes see them: the Services facade over the tuning service and the
worker stack, the gateway's section of the daemon config, and the endpoint that follows the current worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from agent.config import DaemonSettings
from agent.gateway.settings import GatewaySettings
from agent.gateway.upstream import SupervisedWorker, WorkerEndpoint
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import services_for, settings_for

pytestmark = pytest.mark.usefixtures("no_daemon_env_overrides")


def test_register_jobs_registers_only_the_telemetry_job(host: HostPaths, tmp_path: Path) -> None:
    """register_jobs adds the telemetry job and starts nothing: the controller starts in its own step."""
    services = services_for(host, tmp_path)
    scheduler = BackgroundScheduler()  # never started: nothing samples this machine
    services.register_jobs(scheduler)
    assert [job.id for job in scheduler.get_jobs()] == ["telemetry"]
    assert services.stack.controller is None
    assert not [e for e in services.events.events if e["kind"].startswith("controller")]
    generation = services.state_generation()
    assert services.stack.start_controller() == "controller off: no worker runs"
    assert [e["kind"] for e in services.events.events] == ["controller_off"]
    assert services.state_generation() == generation + 1
    assert services.controller() == {"enabled": False, "reason": "no worker runs", "decisions": []}


def test_new_settings_reach_the_tuning_service_and_the_worker_stack(host: HostPaths, tmp_path: Path) -> None:
    """A reload hands the new config to the facade; both parts must read it (inline model dirs, intervals)."""
    services = services_for(host, tmp_path)
    new = settings_for(host, tmp_path, telemetry_interval_s=7, controller_enabled=False)
    services.settings = new
    assert services.tuning.settings is new and services.stack.settings is new
    assert services.stack.controller_blocker() == "controller_enabled is false in the daemon config"


def test_gateway_section_builds_the_gateway_settings() -> None:
    section = DaemonSettings.model_validate({"gateway": {"limit": 6, "max_queue": 3, "queue_timeout_s": 5}}).gateway
    assert section.settings() == GatewaySettings(limit=6, max_queue=3, queue_timeout_s=5.0)
    assert DaemonSettings().gateway.settings() == GatewaySettings()


class FakeSupervisor:
    def __init__(self, url: str, pid: int) -> None:
        self.base_url: str | None = url
        self.state = "ready"
        self.pid: int | None = pid


def test_supervised_worker_follows_whichever_supervisor_runs_now() -> None:
    """The daemon's gateway and telemetry keep one endpoint across a reload that replaces (or stops) the worker."""
    running: list[FakeSupervisor | None] = [None]
    ep = SupervisedWorker(current=lambda: running[0])
    assert isinstance(ep, WorkerEndpoint)
    assert (ep.base_url(), ep.is_ready(), ep.pid()) == (None, False, None)
    running[0] = FakeSupervisor("http://127.0.0.1:1", 11)
    assert (ep.base_url(), ep.is_ready(), ep.pid()) == ("http://127.0.0.1:1", True, 11)
    running[0] = FakeSupervisor("http://127.0.0.1:2/", 22)
    running[0].state = "starting"
    assert (ep.base_url(), ep.is_ready(), ep.pid()) == ("http://127.0.0.1:2", False, 22)
