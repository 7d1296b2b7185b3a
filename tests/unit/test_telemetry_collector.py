"""Samplers, the ring, the exposition and the APScheduler job: host (real psutil), worker (a real local HTTP
worker serving llama-server-shaped /metrics and /slots, and the captured real fixtures), gateway, GPU adapter."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from agent.gateway.stats import GatewayStats, RequestRecord
from agent.gateway.upstream import StaticUpstream
from agent.metrics.prom import parse_text, sample_value
from agent.metrics.ring import RingBuffer
from agent.telemetry.collector import JOB_ID, Telemetry, build_telemetry
from agent.telemetry.gpu import GpuSample, GpuSampler
from agent.telemetry.host import HostSampler, busy_ratio
from agent.telemetry.worker import WorkerSampler, parse_llamacpp_metrics, parse_slots, parse_worker_metrics, with_rates
from tests.support.gateway_fakes import FakeWorker

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llamacpp"


@pytest.fixture
def worker() -> Iterator[FakeWorker]:
    w = FakeWorker().start()
    yield w
    w.close()


def test_ring_is_bounded_and_ordered() -> None:
    ring: RingBuffer[int] = RingBuffer(3)
    for i in range(5):
        ring.append(i)
    assert ring.items() == [2, 3, 4] and ring.latest() == 4 and len(ring) == 3 and ring.appended == 5
    assert ring.last(2) == [3, 4] and ring.items(lambda i: i % 2 == 0) == [2, 4]
    with pytest.raises(ValueError):
        RingBuffer(0)


def test_busy_ratio_from_counter_deltas() -> None:
    prev = {"user": 10.0, "system": 5.0, "idle": 80.0, "iowait": 5.0}
    cur = {"user": 13.0, "system": 6.0, "idle": 85.0, "iowait": 6.0}
    assert busy_ratio(prev, cur) == pytest.approx(4 / 10)  # 4 busy of 10 elapsed
    assert busy_ratio(None, cur) is None
    assert busy_ratio(cur, cur) is None


def test_host_sampler_reads_this_host() -> None:
    sampler = HostSampler()
    first = sampler.sample()
    assert all(r is None for r in first.cpu_busy_ratio)  # no previous sample yet
    x = 0
    for i in range(300_000):  # burn a little CPU so the second sample has a non-idle interval
        x += i
    second = sampler.sample()
    assert len(second.cpu_busy_ratio) == psutil.cpu_count()
    assert all(r is None or 0.0 <= r <= 1.0 for r in second.cpu_busy_ratio)
    assert second.mem_total_bytes == psutil.virtual_memory().total
    assert 0 < second.mem_available_bytes <= second.mem_total_bytes
    fams = {f.name: f for f in HostSampler(node_series=True).families(second)}
    modes = {s.labels["mode"] for s in fams["node_cpu_seconds_total"].samples}
    assert {"user", "system", "idle"} <= modes and "guest" not in modes


def test_worker_metrics_from_real_fixtures() -> None:
    s = parse_llamacpp_metrics((FIXTURES / "metrics.txt").read_text(), t=1.0)
    assert s.up and s.predicted_tokens_total == 300 and s.requests_processing == 0
    total, busy, ctx = parse_slots(json.loads((FIXTURES / "slots.json").read_text()))
    assert (total, busy, ctx) == (2, 1, 512)


def test_rates_from_counter_deltas_and_restart() -> None:
    a = parse_llamacpp_metrics("llamacpp:tokens_predicted_total 100\nllamacpp:prompt_tokens_total 10\n", t=10.0)
    b = parse_llamacpp_metrics("llamacpp:tokens_predicted_total 400\nllamacpp:prompt_tokens_total 50\n", t=12.0)
    r = with_rates(b, a)
    assert r.tokens_per_second == pytest.approx(150.0) and r.prompt_tokens_per_second == pytest.approx(20.0)
    restarted = parse_llamacpp_metrics("llamacpp:tokens_predicted_total 5\n", t=13.0)
    assert with_rates(restarted, b).tokens_per_second is None  # counter went down: the worker restarted


@pytest.mark.process
def test_worker_sampler_against_a_live_http_worker(worker: FakeWorker) -> None:
    clock = iter([100.0, 102.0, 103.0])
    sampler = WorkerSampler(StaticUpstream(worker.url), clock=lambda: next(clock))
    try:
        worker.state.predicted_tokens_total = 1000
        first = sampler.sample()
        assert first.up and first.tokens_per_second is None and first.slots_total == 4
        worker.state.predicted_tokens_total = 1300
        second = sampler.sample()
        assert second.tokens_per_second == pytest.approx(150.0)
        worker.kill()
        third = sampler.sample()
        assert not third.up and third.error and third.tokens_per_second is None
    finally:
        sampler.close()


def test_gpu_samples_in_dcgm_names() -> None:
    gpus = [GpuSample(index=0, uuid="GPU-aaaa", name="NVIDIA H200", util_pct=87.0, mem_used_bytes=10 << 30,
                      mem_total_bytes=141 << 30, mem_free_bytes=131 << 30, sm_clock_mhz=1980.0, mem_clock_mhz=3201.0,
                      power_w=412.5, power_limit_w=700.0, temp_c=61.0, throttle_reasons=4),
            GpuSample(index=1, util_pct=3.0)]
    fams = parse_text("".join(f"{line}\n" for f in GpuSampler.families(gpus) for line in _render(f)))
    assert sample_value(fams, "DCGM_FI_DEV_GPU_UTIL", {"gpu": "0", "UUID": "GPU-aaaa"}) == 87
    assert sample_value(fams, "DCGM_FI_DEV_FB_USED", {"gpu": "0"}) == 10 * 1024
    assert sample_value(fams, "DCGM_FI_DEV_FB_FREE", {"gpu": "0"}) == 131 * 1024
    assert sample_value(fams, "DCGM_FI_DEV_POWER_USAGE", {"gpu": "0"}) == pytest.approx(412.5)
    assert sample_value(fams, "DCGM_FI_DEV_POWER_MGMT_LIMIT", {"gpu": "0"}) == pytest.approx(700.0)
    assert sample_value(fams, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", {"gpu": "0"}) == 4
    assert sample_value(fams, "DCGM_FI_DEV_GPU_UTIL", {"gpu": "1"}) == 3
    assert sample_value(fams, "DCGM_FI_DEV_SM_CLOCK", {"gpu": "1"}) is None  # not supported -> absent, not 0


def _render(fam: Any) -> list[str]:
    from agent.metrics.prom import format_families
    return format_families([fam]).splitlines()


class Broken:
    name = "worker"

    def sample(self) -> Any:
        raise RuntimeError("boom")

    def close(self) -> None:
        pass


def test_one_failing_sampler_is_contained_and_exported() -> None:
    stats = GatewayStats()
    stats.finish(RequestRecord(route="/v1/completions", stream=True, started=0.0, ttft_s=0.2, itl_s=[0.01, 0.02],
                               e2e_s=0.3, tokens_in=5, tokens_out=3, outcome="ok", queue_wait_s=0.0))
    tel = Telemetry(host=HostSampler(), worker=Broken(), gateway=stats, capacity=5)  # type: ignore[arg-type]
    s = tel.sample_once()
    assert s.host is not None and s.gateway is not None and s.worker is None
    assert "boom" in s.errors["worker"]
    fams = parse_text(tel.exposition())
    assert sample_value(fams, "hosttune_telemetry_sampler_success", {"sampler": "worker"}) == 0
    assert sample_value(fams, "hosttune_telemetry_sampler_success", {"sampler": "host"}) == 1
    assert sample_value(fams, "hosttune_gateway_ttft_seconds_bucket", {"le": "0.1"}) == 0
    assert sample_value(fams, "hosttune_gateway_ttft_seconds_bucket", {"le": "0.2"}) == 1
    assert sample_value(fams, "hosttune_gateway_itl_seconds_count") == 2
    assert sample_value(fams, "hosttune_gateway_completion_tokens_total") == 3
    assert sample_value(fams, "hosttune_host_memory_headroom_ratio") is not None
    assert not [n for n in fams if n.startswith("node_")]  # node_exporter's names: off unless asked for
    for _ in range(10):
        tel.sample_once()
    assert len(tel.ring) == 5


@pytest.mark.process
def test_register_jobs_samples_periodically_on_a_real_scheduler(worker: FakeWorker) -> None:
    tel = build_telemetry(endpoint=StaticUpstream(worker.url), gateway=GatewayStats(), capacity=100)
    scheduler = BackgroundScheduler()
    try:
        job = tel.register_jobs(scheduler, interval_s=0.1)
        assert job.id == JOB_ID
        scheduler.start()
        deadline = time.monotonic() + 10
        while len(tel.ring) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.shutdown(wait=True)
        tel.close()
    samples = tel.history()
    assert len(samples) >= 3
    assert all(s.worker is not None and s.worker.up for s in samples)
    assert [s.mono for s in samples] == sorted(s.mono for s in samples)
    assert all(s.cpu_cost_s >= 0 for s in samples)
    fams = parse_text(tel.exposition())
    assert sample_value(fams, "hosttune_worker_up") == 1
    assert sample_value(fams, "hosttune_worker_slots") == 4


def test_torch_worker_metrics_map_to_the_same_fields() -> None:
    """The torch worker's real exposition (its render() over scheduler state) fills the same fields as
    llama-server's, plus the KV cache against its budget, the live max batch and OOM counts."""
    from types import SimpleNamespace

    from agent.worker.torch_server.metrics import render
    from agent.worker.torch_server.scheduler import Counters

    counters = Counters(prompt_tokens=120, prompt_seconds=0.5, predicted_tokens=900, predicted_seconds=6.0,
                        decode_steps=300, decode_rows=900, last_step_rows=3, requests_finished=40,
                        requests_requeued=2, oom_total=1)
    state = SimpleNamespace(counters=counters, kv_budget_tokens=4096, running=3, queued=5, max_batch=4,
                            kv_used=1024, kv_reserved=1500, kv_padded=1600)
    text = render(state)  # type: ignore[arg-type]
    s = parse_worker_metrics(text, t=5.0)
    assert s.engine == "torch" and s.up
    assert (s.prompt_tokens_total, s.predicted_tokens_total, s.decode_calls_total) == (120, 900, 300)
    assert (s.requests_processing, s.requests_deferred, s.busy_slots_per_decode) == (3, 5, 3.0)
    assert (s.kv_cache_tokens, s.kv_cache_budget_tokens, s.kv_cache_usage_ratio) == (1024, 4096, 0.25)
    assert (s.max_batch, s.oom_total, s.requests_requeued_total) == (4, 1, 2)
    assert "torch:tokens_predicted_total 900.0" in text  # prometheus_client writes floats
    bumped = text.replace("torch:tokens_predicted_total 900.0", "torch:tokens_predicted_total 1200")
    later = parse_worker_metrics(bumped, t=7.0)
    assert with_rates(later, s).tokens_per_second == pytest.approx(150.0)
    fams = {f.name: f for f in WorkerSampler.families(s)}
    assert fams["hosttune_worker_kv_cache_usage_ratio"].samples[0].value == 0.25
    assert fams["hosttune_worker_max_batch"].samples[0].value == 4
    # llama-server's text has none of the torch-only figures: they stay absent, not zero
    llama = parse_worker_metrics((FIXTURES / "metrics.txt").read_text(), t=1.0)
    assert llama.engine == "llamacpp" and llama.kv_cache_tokens is None and llama.max_batch is None
    assert WorkerSampler.families(llama)[0].name == "hosttune_worker_up"
    assert not {f.name: f for f in WorkerSampler.families(llama)}["hosttune_worker_max_batch"].samples
