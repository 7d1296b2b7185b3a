"""The operator pack (monitoring/) read without running anything: the Grafana dashboard is well formed, every panel
queries the `${datasource}` Prometheus with at least one expression, every variable it uses is defined, and no
expression (dashboard or rule) selects a metric outside the issue-15 contract; the rules follow the naming
convention, every alert carries a severity, annotations and a runbook section in docs/operator-pack.md, and every
rule is exercised by the promtool tests (which tests/e2e/test_prometheus_rules.py runs)."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from tests.support import promql_names as pn
from tests.support import tiers

DOC = pn.REPO / "docs/operator-pack.md"


# ----- the PromQL reader the checks below rely on ------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.95, sum by (le) (rate(hosttune_gateway_ttft_seconds_bucket{instance=~"$instance"}'
     '[$__rate_interval])))', {"hosttune_gateway_ttft_seconds_bucket"}),
    ('a_total * on (job, instance) group_left (policy) b_info{x="y"}', {"a_total", "b_info"}),
    ("time() - c_seconds offset 5m > bool 1e3", {"c_seconds"}),
    ('level:metric:rate5m{policy=~"$policy"} and without (le) d', {"level:metric:rate5m", "d"}),
    ('up{job="hosttune", instance=~"$instance"} == 0', {"up"}),
])
def test_metric_names_finds_what_an_expression_selects(expr: str, names: set[str]) -> None:
    assert pn.metric_names(expr) == names


def test_variables_and_substitution() -> None:
    expr = 'rate(x{instance=~"$instance"}[$__rate_interval]) / ${policy}'
    assert pn.variables(expr) == {"instance", "__rate_interval", "policy"}
    assert pn.substitute(expr, {"instance": ".*", "__rate_interval": "1m", "policy": "2"}) == \
        'rate(x{instance=~".*"}[1m]) / 2'
    with pytest.raises(KeyError, match="policy"):
        pn.substitute(expr, {"instance": ".*", "__rate_interval": "1m"})


# ----- the dashboard -----------------------------------------------------------------------------------------------

def test_dashboard_is_a_grafana_dashboard_with_a_prometheus_datasource_variable() -> None:
    dash = pn.load_dashboard()
    assert dash["uid"] == "hosttune-fleet" and 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "policy"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        m = re.fullmatch(r"label_values\((\w+), (\w+)\)", var["query"]["query"])
        assert m and m.group(2) == name and var["definition"] == var["query"]["query"], var
        assert m.group(1) in pn.CONTRACT, f"${name} is read from {m.group(1)}, outside the metric contract"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_every_panel_queries_the_datasource_variable_with_an_expression() -> None:
    panels = list(pn.data_panels(pn.load_dashboard()))
    assert len(panels) >= 15
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no target"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"], (panel["title"], t["refId"])
            assert t["expr"].strip(), (panel["title"], t["refId"])


def test_every_variable_the_dashboard_uses_is_defined() -> None:
    dash = pn.load_dashboard()
    defined = {v["name"] for v in dash["templating"]["list"]} | pn.GRAFANA_BUILTINS
    used = {name for t in pn.targets(dash) for name in pn.variables(t.expr)}
    used |= {name for p in pn.data_panels(dash) for name in pn.variables(p["datasource"]["uid"])}
    assert used - defined == set()
    assert {"instance", "policy", "datasource"} <= used  # each defined variable is used too


def test_no_panel_selects_a_metric_outside_the_contract() -> None:
    allowed = pn.CONTRACT | pn.recording_rule_names()
    outside = {(t.panel, t.ref_id, name) for t in pn.targets(pn.load_dashboard())
               for name in pn.metric_names(t.expr) if name not in allowed}
    assert outside == set()


@pytest.mark.parametrize("panel", ["Fleet TTFT p95 / p50", "Fleet ITL p95 / p50", "Output tokens/s per host",
                                   "Requests/s by outcome", "Admission wait", "Worker up and restarts", "Drift",
                                   "Policy, worker and build", "Huge pages: reserved vs used by the worker",
                                   "GPU utilization", "GPU memory used / free", "GPU clock events active"])
def test_the_dashboard_has_the_panels_operators_need(panel: str) -> None:
    assert panel in {p["title"] for p in pn.data_panels(pn.load_dashboard())}


# ----- the rules ---------------------------------------------------------------------------------------------------

def test_rules_select_only_contract_metrics_and_recording_rules() -> None:
    allowed = pn.CONTRACT | pn.recording_rule_names()
    outside = {(rule.get("record") or rule["alert"], name) for rule in pn.load_rules()
               for name in pn.metric_names(rule["expr"]) if name not in allowed}
    assert outside == set()


def test_recording_rules_are_named_level_metric_operations() -> None:
    names = pn.recording_rule_names()
    assert len(names) >= 10
    for name in names:
        level, metric, ops = name.split(":")
        assert re.fullmatch(r"[a-z_]+", level) and re.fullmatch(r"[a-z0-9_]+", ops), name
        assert not metric.endswith("_total"), f"{name}: a rate drops _total"
        assert metric.removesuffix("_bucket") in pn.HISTOGRAMS or f"{metric}_total" in pn.CONTRACT, name


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the markdown's headings (lower case, punctuation dropped, spaces to dashes)."""
    heads = re.findall(r"^#+\s+(.+)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    anchors = _anchors(DOC.read_text())
    alerts = [rule for rule in pn.load_rules() if "alert" in rule]
    assert len(alerts) >= 10
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        notes = rule["annotations"]
        assert "{{ $labels.instance }}" in notes["summary"] and "$labels" in notes["description"], rule["alert"]
        doc, _, anchor = notes["runbook"].partition("#")
        assert doc == "docs/operator-pack.md" and anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/operator-pack.md has no section for {rule['alert']}"


def test_every_rule_is_exercised_by_a_promtool_test() -> None:
    tested_alerts: set[str] = set()
    tested_exprs: list[str] = []
    for path in sorted(pn.RULE_TESTS.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../hosttune-rules.yml"], path
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                tested_alerts.add(case["alertname"])
            tested_exprs += [case["expr"] for case in test.get("promql_expr_test", [])]
    alerts = {rule["alert"] for rule in pn.load_rules() if "alert" in rule}
    assert alerts - tested_alerts == set()
    used = {name for expr in tested_exprs for name in pn.metric_names(expr)}
    assert pn.recording_rule_names() - used == set()


def test_each_alert_is_tested_both_firing_and_not_firing() -> None:
    seen: dict[str, set[bool]] = {}
    for path in sorted(pn.RULE_TESTS.glob("*.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                seen.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {name for name, kinds in seen.items() if kinds != {True, False}} == set()


# ----- the tier the promtool and real-Prometheus tests run in ------------------------------------------------------

def test_the_prometheus_tier_names_the_missing_binary_and_must_run_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "prometheus" in tiers.REQUIRED_ON_CI
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "promtool" else f"/usr/bin/{name}")
    why = tiers.CHECKS["prometheus"]()
    assert why is not None and "promtool" in why and "install-system-deps.sh test" in why
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert tiers.CHECKS["prometheus"]() is None
