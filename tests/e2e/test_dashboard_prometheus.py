"""Every query of the Grafana dashboard, run by a real Prometheus against a real hosttune daemon.

The daemon runs on a copy of the committed fixture host (server-2s-8gpu: its /proc and /sys trees, its 8 simulated
H100s through the NVML simulator, so the GPU series exist) with a real llama-server worker on the bundled model;
its policy reserves huge pages on the fixture tree and sets TTFT/ITL SLOs. Debian's `prometheus` scrapes the
daemon's /metrics every second with the operator pack's rules loaded. After a few streamed chat requests through
the gateway and two more scrapes, each panel's expression (Grafana variables substituted the way the dashboard's
"All" view does) goes through /api/v1/query: every panel returns data, and every target does except the few whose
series only exist after an event this run does not cause (EVENT_ONLY, each with its reason). Every recording rule
returns data and every rule evaluates without error. The figures are printed (run with -s to see them)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.bench.llama_local import free_port
from agent.hostfs import HostPaths
from tests.e2e.test_daemon_engine import EngineDaemon
from tests.support import promql_names as pn
from tests.support.gpu_sim import SERVER_8GPU
from tests.support.prometheus_server import PrometheusServer

pytestmark = [pytest.mark.engine, pytest.mark.prometheus, pytest.mark.slow]

REQUESTS = 6
WINDOW = "1m"   # $__rate_interval: the whole test fits in it
VIEW = {"instance": ".*", "policy": ".*", "__rate_interval": WINDOW, "__interval": "1s", "__range": WINDOW}
# (panel title, refId) -> why its series may be absent in this run (the panel still has to return data).
EVENT_ONLY = {
    ("Controller", "B"): "hosttune_controller_decisions_total moves only when the controller decides something",
    ("Huge pages: reserved vs used by the worker", "B"):
        "the worker's smaps_rollup is read under the fixture tree's /proc, which has no live worker PID",
    ("GPU health: last Xid, ECC errors", "B"): "the simulated H100s report no ECC counters unless ECC is on",
    ("GPU health: last Xid, ECC errors", "C"): "the simulated H100s report no ECC counters unless ECC is on",
}


def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "dashboard-policy.yaml"
    path.write_text(
        "name: dashboard-check\n"
        "hugepages:\n  - {size: 2M, count: 16}\n"
        f"worker:\n  engine: llamacpp\n  port: {free_port()}\n  parallel: 2\n  ctx: 2048\n  threads: 2\n"
        "  placement: {mode: none}\n"
        "slo:\n  ttft_p95_ms: 2000\n  itl_p95_ms: 200\n")
    return path


@pytest.fixture
def daemon(host: HostPaths, tmp_path: Path) -> Iterator[EngineDaemon]:
    d = EngineDaemon(tmp_path, policy_file(tmp_path), procfs=str(host.procfs), sysfs=str(host.sysfs),
                     rootfs=str(host.rootfs), nvml_sim=str(SERVER_8GPU), drift_check_s=2)
    yield d
    d.proc.stop()


@pytest.fixture
def prometheus(daemon: EngineDaemon, tmp_path: Path) -> Iterator[PrometheusServer]:
    target = daemon.api_url.removeprefix("http://")
    server = PrometheusServer(tmp_path, {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(pn.RULES)],
        "scrape_configs": [{"job_name": "hosttune", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target]}]}],
    })
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def chat(gateway_url: str, i: int) -> int:
    """One streamed chat request; the number of content chunks the client saw."""
    body = {"messages": [{"role": "user", "content": f"Count from {i} to {i + 10}."}], "max_tokens": 16,
            "stream": True}
    chunks = 0
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=body, timeout=120, trust_env=False) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks += 1
    return chunks


def wait_for(prom: PrometheusServer, expr: str, ok: Any, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = prom.query(expr)
        if ok(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{expr}: {result}")
        time.sleep(0.5)


def figures(result: list[dict[str, Any]]) -> str:
    shown = []
    for s in result[:4]:
        labels = {k: v for k, v in s["metric"].items() if k not in ("job", "instance", "__name__")}
        value = float(s["value"][1])
        shown.append(f"{json.dumps(labels, sort_keys=True) if labels else ''}={value:.4g}")
    more = f" (+{len(result) - 4} series)" if len(result) > 4 else ""
    return ", ".join(shown) + more


def test_every_dashboard_query_returns_data_from_a_real_prometheus(daemon: EngineDaemon,
                                                                    prometheus: PrometheusServer) -> None:
    wait_for(prometheus, 'up{job="hosttune"} == 1', bool)
    chunks = [chat(daemon.gateway_url, i) for i in range(REQUESTS)]
    assert all(c > 0 for c in chunks), chunks
    # The requests are in Prometheus once a scrape shows them all; two more scrapes give every rate two points.
    wait_for(prometheus, "sum(hosttune_gateway_ttft_seconds_count)",
             lambda r: bool(r) and float(r[0]["value"][1]) >= REQUESTS)
    time.sleep(2.5)

    dash = pn.load_dashboard()
    problems: list[str] = []
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            label = var["name"]
            metric = var["query"]["query"].removeprefix("label_values(").split(",")[0]
            values = prometheus.label_values(label, metric)
            print(f"variable ${label}: {values}")
            if not values:
                problems.append(f"${label}: label_values({metric}, {label}) is empty")

    panels_with_data: set[str] = set()
    for t in pn.targets(dash):
        result = prometheus.query(pn.substitute(t.expr, VIEW))
        print(f"{t.panel} [{t.ref_id}]: {figures(result) if result else 'no data'}")
        if result:
            panels_with_data.add(t.panel)
        elif (t.panel, t.ref_id) not in EVENT_ONLY:
            problems.append(f"{t.panel} [{t.ref_id}] returned no data: {t.expr}")
    problems += [f"panel {title!r} returned no data at all"
                 for title in sorted({p["title"] for p in pn.data_panels(dash)} - panels_with_data)]

    for name in sorted(pn.recording_rule_names()):
        result = prometheus.query(name)
        print(f"rule {name}: {figures(result) if result else 'no data'}")
        if not result:
            problems.append(f"recording rule {name} has no data")
    problems += [f"rule {r['name']}: {r['health']} {r.get('lastError', '')}"
                 for r in prometheus.rule_health() if r["health"] != "ok"]
    print(f"client: {REQUESTS} streamed requests, {sum(chunks)} content chunks")
    assert problems == []
