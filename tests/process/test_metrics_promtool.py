"""promtool (Prometheus' own linter of the text format) accepts every exposition hosttune writes: the daemon's
telemetry (host, gateway histograms, sampler health), the gateway's own /metrics and the torch worker's. The process
tier runs on CI, where promtool comes from scripts/install-system-deps.sh (the `prometheus` package): missing there
fails the test; elsewhere it skips with the reason."""

from __future__ import annotations

import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from agent.gateway.stats import GatewayStats, RequestRecord
from agent.metrics.prom import format_families, parse_text, sample_value
from agent.telemetry.collector import Telemetry
from agent.telemetry.host import HostSampler
from agent.worker.torch_server.metrics import render
from agent.worker.torch_server.scheduler import Counters
from tests.support import tiers


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if tiers.on_ci():
            pytest.fail("promtool must be installed on CI (scripts/install-system-deps.sh test)", pytrace=False)
        pytest.skip("promtool not installed (Debian package prometheus)")
    return path


# Lint findings on names kept on purpose: node_exporter's own (node_memory_MemTotal_bytes, ...) fail the snake_case
# rule; the torch worker's `torch:*` mirror llama-server's `llamacpp:*` (colons). Any other finding, and any parse
# error, fails the test.
NODE_EXPORTER_CAMEL_CASE = re.compile(
    r"^node_memory_\w+ metric names should be written in 'snake_case' not 'camelCase'$")
TORCH_COLON = re.compile(r"^torch:\w+ metric names should not contain ':'$")


def check(text: str, allowed: re.Pattern[str] = NODE_EXPORTER_CAMEL_CASE) -> None:
    done = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60, check=False)
    findings = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert all(allowed.match(line) for line in findings), findings
    assert done.returncode == 0 or findings, done


def busy_stats() -> GatewayStats:
    stats = GatewayStats()
    for i in range(20):
        stats.finish(RequestRecord(route="/v1/chat/completions", stream=True, started=0.0, queue_wait_s=0.001 * i,
                                   ttft_s=0.05 * i, itl_s=[0.01 * (i % 5 + 1)] * 10, e2e_s=0.5 * i, tokens_in=10,
                                   tokens_out=11, outcome="ok" if i % 4 else "error"))
    return stats


def test_gateway_exposition_passes_promtool() -> None:
    stats = busy_stats()
    text = format_families(stats.families(stats.sample()))
    check(text)
    fams = parse_text(text)
    assert fams["hosttune_gateway_itl_seconds"].type == "histogram"
    assert sample_value(fams, "hosttune_gateway_itl_seconds_count") == 150


def test_telemetry_exposition_passes_promtool() -> None:
    tel = Telemetry(host=HostSampler(), gateway=busy_stats(), capacity=3)
    tel.sample_once()
    text = tel.exposition()
    check(text)
    assert sample_value(parse_text(text), "hosttune_telemetry_sampler_success", {"sampler": "gateway"}) == 1


def test_torch_worker_exposition_passes_promtool() -> None:
    counters = Counters(prompt_tokens=120, prompt_seconds=0.5, predicted_tokens=900, predicted_seconds=6.0,
                        decode_steps=300, decode_rows=900, last_step_rows=3, requests_finished=40)
    state = SimpleNamespace(counters=counters, kv_budget_tokens=4096, running=3, queued=5, max_batch=4,
                            kv_used=1024, kv_reserved=1500, kv_padded=1600)
    text = render(state)  # type: ignore[arg-type]
    check(text, allowed=TORCH_COLON)
    assert sample_value(parse_text(text), "torch:tokens_predicted_total") == 900
