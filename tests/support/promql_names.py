"""The operator pack's metric vocabulary, for the tests that hold the rules and the dashboard against it: the
metric contract of issue 15 (what the daemon's /metrics exports), a PromQL reader that finds the metric names an
expression selects, and the Grafana dashboard's panels, targets and variables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring/prometheus/hosttune-rules.yml"
RULE_TESTS = REPO / "monitoring/prometheus/tests"
DASHBOARD = REPO / "monitoring/grafana/hosttune-fleet.json"

# Histograms: NAME_bucket{le}, NAME_sum, NAME_count.
HISTOGRAMS = frozenset({
    "hosttune_gateway_ttft_seconds", "hosttune_gateway_itl_seconds", "hosttune_gateway_request_duration_seconds",
    "hosttune_gateway_queue_wait_seconds",
})
# The series the pack may select: the issue-15 contract plus the existing series it keeps (docs/telemetry.md).
CONTRACT = frozenset({
    "up",
    "hosttune_gateway_requests_total", "hosttune_gateway_completion_tokens_total",
    "hosttune_gateway_prompt_tokens_total", "hosttune_gateway_queued", "hosttune_gateway_in_flight",
    "hosttune_gateway_admission_limit",
    "hosttune_build_info", "hosttune_policy_info", "hosttune_worker_info", "hosttune_policy_slo_seconds",
    "hosttune_drift_targets", "hosttune_last_drift_check_timestamp_seconds", "hosttune_last_apply_timestamp_seconds",
    "hosttune_last_apply_success", "hosttune_controller_decisions_total", "hosttune_controller_knob",
    "hosttune_worker_restarts_total", "hosttune_worker_crashes_total", "hosttune_worker_up",
    "hosttune_hugepages_reserved_bytes", "hosttune_worker_memory_bytes", "hosttune_telemetry_sampler_success",
    "hosttune_telemetry_last_sample_timestamp_seconds",
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "hosttune_gpu_clock_event_active",
}) | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}

# Grafana's own variables, substituted by Grafana rather than defined by the dashboard.
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__range"})

_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MODIFIER = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers outside label matchers, ranges, grouping clauses and
    strings that are neither functions (followed by "(") nor keywords nor numbers."""
    text = _VARIABLE.sub("1", _STRING.sub('""', expr))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _MODIFIER.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}


def variables(text: str) -> set[str]:
    """Grafana variables ($name or ${name}) used in a string."""
    return {a or b for a, b in _VARIABLE.findall(text)}


def load_rules() -> list[dict[str, Any]]:
    """Every rule of the pack (recording and alerting), in file order."""
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recording_rule_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


@dataclass(frozen=True)
class Target:
    panel: str
    ref_id: str
    expr: str
    instant: bool


def load_dashboard() -> dict[str, Any]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dash


def data_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries (rows only group)."""
    for panel in dash["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def targets(dash: dict[str, Any]) -> Iterator[Target]:
    for panel in data_panels(dash):
        for t in panel.get("targets", []):
            yield Target(panel["title"], t["refId"], t["expr"], bool(t.get("instant")))


def substitute(expr: str, values: dict[str, str]) -> str:
    """An expression with Grafana's variables replaced the way Grafana would for one view of the dashboard."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]
    return _VARIABLE.sub(one, expr)
