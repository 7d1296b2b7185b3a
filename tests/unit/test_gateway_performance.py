"""GET /v1/performance's figures: what the gateway served in a window, counting only requests that started (and
finished) inside it, opened no earlier than the policy / worker in force, honest about a truncated record buffer;
and the route through the daemon's worker stack (a fake supervisor and the gateway's real GatewayStats)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.control.feed import GatewayFeed
from agent.gateway.performance import window_figures
from agent.gateway.stats import GatewayStats, RequestRecord
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import main_thread_client, services_for, settings_for

pytestmark = pytest.mark.usefixtures("no_daemon_env_overrides")


def rec(started: float, ttft: float, e2e: float, tokens: int = 10, outcome: str = "ok",
        itl: tuple[float, ...] = ()) -> RequestRecord:
    return RequestRecord(route="/v1/completions", stream=True, started=started, ttft_s=ttft, e2e_s=e2e,
                         tokens_out=tokens, outcome=outcome, itl_s=list(itl))


def test_only_requests_that_started_inside_the_window_count() -> None:
    now = 1000.0
    records = [rec(900.0, 9.0, 95.0, tokens=999),           # started before the window, finished inside it
               *(rec(950.0 + i, 0.1 * (i + 1), 1.0, tokens=20, itl=(0.01, 0.03)) for i in range(20))]
    f = window_figures(records, now=now, seconds=60)
    assert f.requests == 20 and f.window_s == 60 and f.covered_s == 60 and not f.truncated
    assert f.output_tokens == 400
    assert f.output_tokens_per_second == pytest.approx(400 / 60, abs=1e-3)
    # numpy-style linear interpolation over 0.1 .. 2.0: p95 at position 18.05
    assert f.ttft_p95_s == pytest.approx(1.9 + 0.05 * 0.1)
    assert f.ttft_p50_s == pytest.approx(1.05)
    assert f.itl_p95_s == pytest.approx(0.03)
    assert f.e2e_p95_s == pytest.approx(1.0)


def test_since_opens_the_window_later_and_tokens_per_second_use_its_span() -> None:
    records = [rec(945.0, 5.0, 6.0, tokens=100), rec(985.0, 0.2, 1.0, tokens=30), rec(990.0, 0.4, 1.0, tokens=30)]
    f = window_figures(records, now=1000.0, seconds=60, since=980.0)
    assert f.window_s == 20 and f.requests == 2
    assert f.ttft_p95_s == pytest.approx(0.2 + 0.95 * 0.2)
    assert f.output_tokens_per_second == pytest.approx(3.0)
    # `since` before the window start changes nothing
    assert window_figures(records, now=1000.0, seconds=60, since=100.0).requests == 3


def test_failures_and_rejections_are_counted_apart_and_not_in_the_latencies() -> None:
    records = [rec(960.0, 0.1, 1.0), rec(961.0, 9.0, 9.0, outcome="error", tokens=0),
               rec(962.0, 9.0, 9.0, outcome="timeout", tokens=5), rec(963.0, 0.0, 0.0, outcome="rejected", tokens=0),
               rec(964.0, 9.0, 2.0, outcome="client_abort", tokens=3)]
    f = window_figures(records, now=1000.0, seconds=60)
    assert (f.requests, f.failed, f.rejected) == (1, 2, 1)
    assert f.ttft_p95_s == pytest.approx(0.1)
    assert f.output_tokens == 18  # the gateway counts tokens of any outcome (as its tokens/s window does)


def test_an_empty_window_has_no_quantiles() -> None:
    f = window_figures([], now=50.0, seconds=10)
    assert f.requests == 0 and f.ttft_p95_s is None and f.itl_p95_s is None
    assert f.output_tokens_per_second == 0
    assert window_figures([], now=50.0, seconds=10, since=50.0).output_tokens_per_second is None
    with pytest.raises(ValueError):
        window_figures([], now=50.0, seconds=0)


def test_a_full_buffer_reaching_into_the_window_truncates_it_to_what_it_surely_holds() -> None:
    # Ordered by finish, as the gateway appends them. The oldest kept finished at 975: anything that started
    # before may have been pushed out, so only requests started at or after 975 count.
    records = [rec(970.0, 1.0, 5.0, tokens=50), rec(976.0, 0.3, 1.0, tokens=40), rec(980.0, 0.5, 1.0, tokens=40)]
    f = window_figures(records, now=1000.0, seconds=60, capacity=3)
    assert f.truncated and f.window_s == 60 and f.covered_s == 25
    assert f.requests == 2 and f.output_tokens == 80
    assert f.output_tokens_per_second == pytest.approx(80 / 25)
    # Room left in the buffer (or its oldest finished before the window): nothing was pushed out of the window.
    assert not window_figures(records, now=1000.0, seconds=60, capacity=4).truncated
    assert not window_figures(records, now=1000.0, seconds=20, capacity=3).truncated


class ReadySupervisor:
    """What WorkerStack.performance reads of a supervisor: the ready event and status().ready_at."""

    def __init__(self, ready_at: float | None) -> None:
        self.ready_at = ready_at

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.ready_at is not None

    def status(self) -> SimpleNamespace:
        return SimpleNamespace(ready_at=self.ready_at)


def finish(stats: GatewayStats, ago: float, ttft: float, tokens: int) -> None:
    stats.finish(rec(time.monotonic() - ago, ttft, 0.5, tokens=tokens))


def test_the_route_answers_without_a_worker(host: HostPaths, tmp_path: Path) -> None:
    with main_thread_client(settings_for(host, tmp_path)) as client:
        r = client.get("/v1/performance", params={"seconds": 30})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["serving"] is False and body["worker_ready"] is False and body["policy"] is None
        assert body["requests"] == 0 and body["ttft_p95_s"] is None and body["window_s"] == 0
        for bad in (0, -5, 4000, "x"):
            assert client.get("/v1/performance", params={"seconds": bad}).status_code == 422


def stack_with(host: HostPaths, tmp_path: Path, ready_at: float | None, policy_age_s: float) -> Any:
    services = services_for(host, tmp_path)
    stack = services.stack
    stats = GatewayStats()
    stack.gateway = SimpleNamespace(app=SimpleNamespace(stats=stats))
    stack.supervisor = ReadySupervisor(ready_at)
    stack.policy = SimpleNamespace(name="good", slo=None)
    stack.policy_since = time.time() - policy_age_s
    return services, stats


def test_the_window_opens_when_the_worker_in_service_became_ready(host: HostPaths, tmp_path: Path) -> None:
    services, stats = stack_with(host, tmp_path, ready_at=time.time() - 20, policy_age_s=500)
    finish(stats, ago=40, ttft=3.0, tokens=100)   # served by the worker before the restart
    for i in range(5):
        finish(stats, ago=10 - i, ttft=0.2, tokens=20)
    out = services.performance(60)
    assert out["serving"] and out["worker_ready"] and out["policy"] == "good"
    assert 19 <= out["window_s"] <= 21 and out["since"] == pytest.approx(time.time() - 20, abs=1)
    assert out["requests"] == 5 and out["ttft_p95_s"] == pytest.approx(0.2)
    assert out["output_tokens"] == 100
    assert out["now"] == pytest.approx(time.time(), abs=1)


def test_a_newer_policy_opens_the_window_and_a_restarting_worker_has_none(host: HostPaths, tmp_path: Path) -> None:
    services, stats = stack_with(host, tmp_path, ready_at=time.time() - 300, policy_age_s=5)
    finish(stats, ago=30, ttft=1.0, tokens=10)
    finish(stats, ago=2, ttft=0.1, tokens=10)
    out = services.performance(60)
    assert 4 <= out["window_s"] <= 6 and out["requests"] == 1
    services.stack.supervisor = ReadySupervisor(None)  # restart asked: the ready event is cleared at once
    out = services.performance(60)
    assert out["worker_ready"] is False and out["window_s"] == 0 and out["requests"] == 0


def test_a_reload_moves_policy_since(host: HostPaths, tmp_path: Path) -> None:
    services, _ = stack_with(host, tmp_path, ready_at=time.time(), policy_age_s=1000)
    before = services.stack.policy_since
    services.stack.reload(SimpleNamespace(policy=SimpleNamespace(worker=None, slo=None)), None,
                          services.settings.controller_enabled)
    assert services.stack.policy_since > before


# ---- the records are read under the stats lock -----------------------------------------------------------------
class LockCheckedDeque(deque[RequestRecord]):
    """GatewayStats.recent that fails any read of its items made without the stats lock held: the gateway thread
    appends under that lock, and iterating a deque another thread appends to raises RuntimeError."""

    lock: Any = None

    def __iter__(self) -> Iterator[RequestRecord]:
        assert self.lock is not None and self.lock.locked(), "GatewayStats.recent read without the stats lock"
        return super().__iter__()


def checked_stats(stats: GatewayStats) -> GatewayStats:
    checked = LockCheckedDeque(maxlen=stats.recent.maxlen)
    checked.lock = stats._lock
    stats.recent = checked
    return stats


def test_recent_records_is_a_copy_taken_under_the_lock() -> None:
    stats = checked_stats(GatewayStats(recent=3))
    for i in range(4):
        stats.finish(rec(100.0 + i, 0.1, 0.5))
    records = stats.recent_records()
    assert [r.started for r in records] == [101.0, 102.0, 103.0]  # oldest first, the deque's last 3
    stats.finish(rec(104.0, 0.1, 0.5))
    assert len(records) == 3 and records[-1].started == 103.0  # a copy: later appends do not reach it


def test_the_performance_route_reads_the_records_under_the_lock(host: HostPaths, tmp_path: Path) -> None:
    services, stats = stack_with(host, tmp_path, ready_at=time.time() - 20, policy_age_s=500)
    checked_stats(stats)
    for i in range(3):
        finish(stats, ago=10 - i, ttft=0.2, tokens=20)
    out = services.performance(60)
    assert out["requests"] == 3 and out["output_tokens"] == 60


def test_the_controller_feed_reads_the_records_under_the_lock() -> None:
    stats = checked_stats(GatewayStats())
    feed = GatewayFeed(stats, watch_gpu=False)
    stats.finish(rec(time.monotonic() - 1, 0.1, 0.5))
    assert feed.read().finished == ()  # first read: starts from now
    stats.finish(rec(time.monotonic() - 1, 0.2, 0.5))
    tick = feed.read()
    assert [f.ttft_s for f in tick.finished] == [0.2]


def test_a_request_still_in_flight_is_in_no_figure_so_p95_ttft_reads_low() -> None:
    # docs/api.md: only finished requests count. 19 fast requests finished; the slow one still waits for its first
    # token when the window is read, so it is in no figure and the p95 is the fast requests'.
    stats = GatewayStats()
    now = time.monotonic()
    for i in range(19):
        stats.finish(rec(now - 30 + i, 0.2, 0.5))
    slow = rec(now - 25, 9.0, 10.0)  # started inside the window, not finished yet: not in the records
    read_early = window_figures(stats.recent_records(), now=now, seconds=60)
    assert read_early.requests == 19 and read_early.ttft_p95_s == pytest.approx(0.2)
    stats.finish(slow)
    read_late = window_figures(stats.recent_records(), now=now, seconds=60)
    assert read_late.requests == 20 and read_late.ttft_p95_s is not None and read_late.ttft_p95_s > 0.2
