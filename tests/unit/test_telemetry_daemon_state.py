"""The daemon's own series (agent/telemetry/daemon_state.py) from a real daemon state: a policy applied on the
fixture host through the tuning service, its drift checks, a failed apply and a revert; the running worker's
knobs; hostile label values; and the node_* switch of the daemon config."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from agent import __version__
from agent.config import load_settings
from agent.daemon.metrics_state import worker_info
from agent.daemon.services import Services
from agent.errors import InputError
from agent.hostfs import HostPaths
from agent.metrics.prom import MetricFamily, format_families, iter_samples, parse_text, sample_value
from agent.policy.model import WorkerSpec
from agent.telemetry.daemon_state import LABEL_MAX, DaemonState, DaemonStatePart, PolicyState, daemon_families
from agent.telemetry.host import HostSampler
from tests.support.daemon_fixtures import ROUND_TRIP_POLICY, services_for

pytestmark = pytest.mark.usefixtures("no_daemon_env_overrides")

SLO_POLICY = ROUND_TRIP_POLICY + "slo:\n  ttft_p95_ms: 1500\n  itl_p95_ms: 80\n"


def scrape(services: Services) -> dict[str, MetricFamily]:
    """The daemon's series as a scraper sees them: formatted, then parsed back."""
    return parse_text(format_families(daemon_families(services.stack.daemon_state())))


def apply_file(services: Services, path: Path) -> None:
    services.tuning.apply_loaded(services.tuning.load_policy_ref(path))


@pytest.mark.host("server")
def test_applied_policy_drift_and_revert_as_series(host: HostPaths, tmp_path: Path) -> None:
    services = services_for(host, tmp_path)
    before = scrape(services)
    assert sample_value(before, "hosttune_build_info", {"version": __version__}) == 1
    for absent in ("hosttune_policy_info", "hosttune_last_apply_success", "hosttune_drift_targets",
                   "hosttune_worker_info", "hosttune_controller_knob"):
        assert absent not in before, absent

    policy = tmp_path / "round-trip.yaml"
    policy.write_text(SLO_POLICY)
    apply_file(services, policy)
    fams = scrape(services)
    digest = hashlib.sha256(policy.read_bytes()).hexdigest()[:12]
    assert sample_value(fams, "hosttune_policy_info", {"policy": "api-round-trip", "digest": digest}) == 1
    assert sample_value(fams, "hosttune_policy_slo_seconds", {"slo": "ttft_p95"}) == pytest.approx(1.5)
    assert sample_value(fams, "hosttune_policy_slo_seconds", {"slo": "itl_p95"}) == pytest.approx(0.08)
    assert sample_value(fams, "hosttune_hugepages_reserved_bytes", {"size": "2M"}) == 16 * (2 << 20)
    assert sample_value(fams, "hosttune_hugepages_reserved_bytes", {"size": "1G"}) is None
    assert sample_value(fams, "hosttune_last_apply_success") == 1
    applied_at = sample_value(fams, "hosttune_last_apply_timestamp_seconds")
    last = services.tuning.last_apply
    assert last is not None and applied_at == last[0]
    assert "hosttune_drift_targets" not in fams  # no drift check yet

    services.tuning.drift_check(reapply=False)
    fams = scrape(services)
    assert sample_value(fams, "hosttune_drift_targets") == 0
    checked = sample_value(fams, "hosttune_last_drift_check_timestamp_seconds")
    assert checked is not None and checked >= applied_at
    host.proc("sys/vm/swappiness").write_text("60\n")  # someone else changes a target the policy holds
    services.tuning.drift_check(reapply=False)
    assert sample_value(scrape(services), "hosttune_drift_targets") == 1

    services.revert(force=True)
    fams = scrape(services)
    for gone in ("hosttune_policy_info", "hosttune_policy_slo_seconds", "hosttune_hugepages_reserved_bytes"):
        assert gone not in fams, gone
    assert sample_value(fams, "hosttune_last_apply_success") == 1  # the last apply itself did succeed


@pytest.mark.host("server")
def test_a_failed_apply_sets_last_apply_success_to_0(host: HostPaths, tmp_path: Path) -> None:
    services = services_for(host, tmp_path)
    policy = tmp_path / "too-many-pages.yaml"
    policy.write_text("name: too-many-pages\nhugepages:\n  - {size: 1G, count: 100000}\n")
    with pytest.raises(InputError):
        apply_file(services, policy)
    fams = scrape(services)
    assert sample_value(fams, "hosttune_last_apply_success") == 0
    assert sample_value(fams, "hosttune_last_apply_timestamp_seconds") is not None
    assert "hosttune_policy_info" not in fams


def test_worker_info_has_the_knobs_in_force_and_unknown_ones_empty() -> None:
    spec = WorkerSpec(model="/srv/models/qwen2.5-7b-q4_k_m.gguf", ctx=8192, parallel=None, ubatch=256,
                      cache_type_k="q8_0")
    state = DaemonState(version="1.2.3", worker=worker_info(spec, restarts=3, slots_seen=4, crashes=1))
    fams = parse_text(format_families(daemon_families(state)))
    (info,) = fams["hosttune_worker_info"].samples
    assert info.value == 1
    assert info.labels == {"engine": "llamacpp", "model": "qwen2.5-7b-q4_k_m.gguf", "slots": "4",
                           "ctx_size": "8192", "batch_size": "", "ubatch_size": "256", "cache_type_k": "q8_0",
                           "cache_type_v": ""}
    assert sample_value(fams, "hosttune_worker_restarts_total") == 3
    assert sample_value(fams, "hosttune_worker_crashes_total") == 1   # the crash-loop alert's series
    assert fams["hosttune_worker_crashes_total"].type == "counter"
    assert worker_info(spec.model_copy(update={"parallel": 2}), 0, 4).slots == 2  # the spec's, when it has one


def test_hostile_label_values_are_capped_and_escaped() -> None:
    hostile = 'evil"} 1\nhosttune_build_info{version="x\\' + "\x00\r\t" + "y" * 400
    spec = WorkerSpec(model=hostile)
    state = DaemonState(version=hostile, policy=PolicyState(name="p" * 300, digest="0123456789ab"),
                        worker=worker_info(spec, 0, None), knobs={"parallel": 4, "not a knob\n": 9})
    text = format_families(daemon_families(state))
    fams = parse_text(text)  # still parses: one sample per line, nothing injected
    assert len(fams["hosttune_build_info"].samples) == 1
    (build,) = fams["hosttune_build_info"].samples
    assert len(build.labels["version"]) == LABEL_MAX and build.labels["version"].startswith('evil"} 1?')
    assert all(c.isprintable() for c in build.labels["version"])
    (policy,) = fams["hosttune_policy_info"].samples
    assert policy.labels["policy"] == "p" * LABEL_MAX
    assert all(len(v) <= LABEL_MAX for s in iter_samples(fams) for v in s.labels.values())
    assert [s.labels for s in fams["hosttune_controller_knob"].samples] == [{"knob": "parallel"}]


def test_a_failing_state_read_leaves_only_these_series_out() -> None:
    def broken() -> DaemonState:
        raise RuntimeError("boom")

    assert DaemonStatePart(broken).families() == []


def test_node_series_are_off_by_default_and_node_exporter_shaped_when_on() -> None:
    quiet, loud = HostSampler(), HostSampler(node_series=True)
    sample = quiet.sample()
    off = {f.name for f in quiet.families(sample)}
    assert off == {"hosttune_host_cpu_busy_ratio", "hosttune_host_memory_headroom_ratio"}
    on = {f.name: f for f in loud.families(sample)}
    assert {"node_cpu_seconds_total", "node_memory_MemTotal_bytes", "node_memory_MemAvailable_bytes",
            "node_memory_SwapTotal_bytes", "node_memory_SwapFree_bytes", "node_load1"} <= set(on)
    assert not [n for n in on if n.startswith("node_") and n not in (
        "node_cpu_seconds_total", "node_memory_MemTotal_bytes", "node_memory_MemAvailable_bytes",
        "node_memory_SwapTotal_bytes", "node_memory_SwapFree_bytes", "node_load1")]
    assert on["node_memory_SwapFree_bytes"].samples[0].value == sample.swap_free_bytes
    assert sample.swap_free_bytes <= sample.swap_total_bytes
    modes = {s.labels["mode"] for s in on["node_cpu_seconds_total"].samples}
    assert {"user", "system", "idle"} <= modes and not modes & {"guest", "guest_nice"}


def test_the_daemon_config_switch_turns_node_series_on(host: HostPaths, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "daemon.yaml"
    config.write_text("telemetry:\n  node_series: true\n")
    assert load_settings(config).telemetry.node_series is True
    assert load_settings(None).telemetry.node_series is False
    config.write_text("telemetry:\n  node_serie: true\n")
    with pytest.raises(InputError, match="did you mean 'node_series'"):
        load_settings(config)
    monkeypatch.setenv("HOSTTUNE_TELEMETRY__NODE_SERIES", "true")
    assert load_settings(None).telemetry.node_series is True
    for on in (False, True):
        (tmp_path / str(on)).mkdir()
        services = services_for(host, tmp_path / str(on), telemetry={"node_series": on})
        services.register_jobs(BackgroundScheduler())  # never started: the exposition samples once, here
        fams = parse_text(services.metrics())
        assert ("node_load1" in fams) is on and "hosttune_host_memory_headroom_ratio" in fams
        assert sample_value(fams, "hosttune_build_info", {"version": __version__}) == 1
