"""The rollout's performance gate, read as data: the verdict filter (filter_plugins/hosttune_perf.py) on pairs of
GET /v1/performance replies, the input checks of its inventory variables, and where its tasks sit in
tasks/rollout.yml (before the new policy; after it, before the worker check; inside the block whose rescue
reverts)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from tests.support.source_module import role_filter

ROLE = Path(__file__).resolve().parents[2] / "ansible/roles/hosttune"


PLUGIN = role_filter("hosttune_perf")
verdict = PLUGIN.perf_verdict


def reply(requests: int = 50, ttft: float | None = 0.4, tps: float | None = 40.0,
          serving: bool = True, failed: int = 0, rejected: int = 0) -> dict[str, Any]:
    return {"serving": serving, "requests": requests, "failed": failed, "rejected": rejected, "ttft_p95_s": ttft,
            "output_tokens_per_second": tps}


def test_the_filter_is_registered_under_its_name() -> None:
    assert PLUGIN.FilterModule().filters()["hosttune_perf_verdict"] is verdict


def test_a_ttft_regression_beyond_the_tolerance_fails_with_both_figures() -> None:
    out = verdict(reply(ttft=0.41), reply(ttft=1.90), ttft_max_increase_pct=25)
    assert out["ok"] is False and out["verdict"] == "worse"
    assert "p95 TTFT 0.41 s -> 1.90 s (+363%, tolerance +25%)" in out["msg"]
    assert out["msg"].endswith("p95 TTFT worse than tolerated")
    assert out["ttft_p95_before_s"] == 0.41 and out["ttft_p95_after_s"] == 1.90


def test_a_tokens_per_second_drop_beyond_the_tolerance_fails() -> None:
    out = verdict(reply(tps=40.0), reply(tps=20.0), tps_max_drop_pct=20)
    assert out["ok"] is False
    assert "output 40.0 -> 20.0 tokens/s (-50%, tolerance -20%)" in out["msg"]
    assert out["msg"].endswith("tokens/s worse than tolerated")
    both = verdict(reply(ttft=0.4, tps=40.0), reply(ttft=4.0, tps=4.0))
    assert both["msg"].endswith("p95 TTFT and tokens/s worse than tolerated")


@pytest.mark.parametrize(("after_ttft", "after_tps", "ok"), [
    (0.50, 32.0, True),     # +25% and -20%: exactly at the tolerances passes
    (0.5004, 40.0, False),  # just over +25%
    (0.40, 31.9, False),    # just under -20%
    (0.10, 90.0, True),     # better on both
])
def test_the_tolerances_are_inclusive_bounds(after_ttft: float, after_tps: float, ok: bool) -> None:
    out = verdict(reply(ttft=0.4, tps=40.0), reply(ttft=after_ttft, tps=after_tps), ttft_max_increase_pct=25,
                  tps_max_drop_pct=20)
    assert out["ok"] is ok, out["msg"]
    assert out["verdict"] == ("ok" if ok else "worse")


@pytest.mark.parametrize("on_no_traffic", ["pass", "fail"])
def test_too_little_traffic_is_said_and_decided_by_the_setting(on_no_traffic: str) -> None:
    out = verdict(reply(requests=50), reply(requests=3, ttft=9.0), min_requests=20, on_no_traffic=on_no_traffic)
    assert out["verdict"] == "no_traffic" and out["ok"] is (on_no_traffic == "pass")
    assert "not enough traffic to judge: 50 requests before, 3 after (need 20 in each window)" in out["msg"]
    assert verdict(reply(requests=19), reply(), min_requests=20, on_no_traffic=on_no_traffic)["verdict"] == \
        "no_traffic"
    assert verdict(reply(requests=20), reply(requests=20), min_requests=20)["verdict"] == "ok"


@pytest.mark.parametrize("on_no_traffic", ["pass", "fail"])
def test_an_after_window_where_every_request_failed_is_worse_not_no_traffic(on_no_traffic: str) -> None:
    # no request finished ok: no TTFT, no tokens; the failures are the traffic
    out = verdict(reply(requests=50), reply(requests=0, failed=50, ttft=None, tps=None), min_requests=20,
                  on_no_traffic=on_no_traffic)
    assert out["ok"] is False and out["verdict"] == "worse", out["msg"]
    assert "error share 0.0% -> 100.0% (+100.0 points, tolerance +5 points)" in out["msg"]
    assert "50 -> 50 requests (failed 0 -> 50, rejected 0 -> 0)" in out["msg"]
    assert out["msg"].endswith("error share worse than tolerated")
    assert out["requests_after"] == 50 and out["ok_after"] == 0 and out["error_share_after_pct"] == 100.0
    # even below min_requests, on_no_traffic=pass does not let failing requests through
    few = verdict(reply(requests=50), reply(requests=0, rejected=3, ttft=None, tps=None), min_requests=20,
                  on_no_traffic="pass")
    assert few["ok"] is False and few["verdict"] == "worse"
    assert "error share 0.0% -> 100.0%" in few["msg"]


def test_forty_percent_failing_with_fast_survivors_is_worse() -> None:
    before = reply(requests=50, ttft=0.4, tps=40.0)
    after = reply(requests=30, failed=12, rejected=8, ttft=0.2, tps=45.0)  # survivors faster than before
    out = verdict(before, after, error_share_max_increase_pct=5)
    assert out["ok"] is False and out["verdict"] == "worse", out["msg"]
    assert "error share 0.0% -> 40.0% (+40.0 points, tolerance +5 points)" in out["msg"]
    assert "(failed 0 -> 12, rejected 0 -> 8)" in out["msg"]
    assert out["msg"].endswith("error share worse than tolerated")


@pytest.mark.parametrize(("before_failed", "after_failed", "ok"), [
    (0, 5, True),    # 0% -> 5%: +5 points, exactly at the tolerance
    (0, 6, False),   # 0% -> 6%
    (10, 15, True),  # 10% -> 15%: the share the host already had is not the policy's fault
    (10, 16, False),
])
def test_the_error_share_tolerance_is_in_points_over_the_before_share(before_failed: int, after_failed: int,
                                                                      ok: bool) -> None:
    out = verdict(reply(requests=100 - before_failed, failed=before_failed),
                  reply(requests=100 - after_failed, failed=after_failed), error_share_max_increase_pct=5)
    assert out["ok"] is ok, out["msg"]


def test_a_host_that_served_no_worker_before_is_skipped() -> None:
    out = verdict(reply(serving=False, requests=0, ttft=None, tps=None), {})
    assert out["ok"] is True and out["verdict"] == "skipped" and "nothing to compare" in out["msg"]


def test_growth_from_zero_and_missing_figures() -> None:
    from_zero = verdict(reply(ttft=0.0), reply(ttft=0.2))
    assert from_zero["ok"] is False and "+inf%" in from_zero["msg"]
    no_tokens = verdict(reply(tps=None), reply(tps=None))  # a worker that reports no token counts
    assert no_tokens["ok"] is True and "n/a" in no_tokens["msg"]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"min_requests": 0}, "min_requests"), ({"min_requests": "many"}, "min_requests"),
    ({"ttft_max_increase_pct": -1}, "ttft_max_increase_pct"), ({"tps_max_drop_pct": 101}, "tps_max_drop_pct"),
    ({"tps_max_drop_pct": float("nan")}, "tps_max_drop_pct"), ({"ttft_max_increase_pct": True}, "ttft_max"),
    ({"on_no_traffic": "maybe"}, "on_no_traffic"),
    ({"error_share_max_increase_pct": 101}, "error_share_max_increase_pct"),
    ({"error_share_max_increase_pct": -1}, "error_share_max_increase_pct"),
])
def test_hostile_settings_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(PLUGIN.PerfGateError, match=field):
        verdict(reply(), reply(), **kwargs)
    with pytest.raises(PLUGIN.PerfGateError):
        verdict("not a reply", reply())  # type: ignore[arg-type]


# ---- the role's tasks ------------------------------------------------------------------------------------------
def load(name: str) -> Any:
    return yaml.safe_load((ROLE / name).read_text())


def render(expr: str, **values: Any) -> str:
    """Jinja as Ansible runs it: its builtin int/string filters, plus Ansible's `match` test."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.tests["match"] = lambda value, pattern: re.match(pattern, value) is not None
    return env.from_string(expr).render(**values)


def numbers_task() -> dict[str, Any]:
    return next(t for t in load("tasks/validate.yml") if t["name"] == "Check the rollout performance gate numbers")


@pytest.mark.parametrize(("name", "value", "ok"), [
    ("hosttune_rollout_perf_window_seconds", 60, True), ("hosttune_rollout_perf_window_seconds", 4, False),
    ("hosttune_rollout_perf_window_seconds", 3601, False), ("hosttune_rollout_perf_window_seconds", "60.5", False),
    ("hosttune_rollout_perf_window_seconds", "60; rm -rf /", False),
    ("hosttune_rollout_perf_min_requests", 0, False), ("hosttune_rollout_perf_min_requests", 100000, True),
    ("hosttune_rollout_ttft_p95_max_increase_pct", -5, False), ("hosttune_rollout_ttft_p95_max_increase_pct", 0, True),
    ("hosttune_rollout_tokens_per_second_max_drop_pct", 100, True),
    ("hosttune_rollout_tokens_per_second_max_drop_pct", 101, False),
    ("hosttune_rollout_error_share_max_increase_pct", 0, True),
    ("hosttune_rollout_error_share_max_increase_pct", 100, True),
    ("hosttune_rollout_error_share_max_increase_pct", 101, False),
    ("hosttune_rollout_error_share_max_increase_pct", "2.5", False),
])
def test_the_gate_numbers_are_bounded(name: str, value: object, ok: bool) -> None:
    task = numbers_task()
    items = {item["name"]: item for item in task["loop"]}
    assert set(items) == {"hosttune_rollout_perf_window_seconds", "hosttune_rollout_perf_min_requests",
                          "hosttune_rollout_ttft_p95_max_increase_pct",
                          "hosttune_rollout_tokens_per_second_max_drop_pct",
                          "hosttune_rollout_error_share_max_increase_pct"}
    item = dict(items[name], value=value)
    results = [render("{{ " + cond + " }}", item=item) == "True" for cond in task["ansible.builtin.assert"]["that"]]
    assert all(results) is ok
    assert name in render(task["ansible.builtin.assert"]["fail_msg"], item=item)


def test_every_gate_variable_has_a_default_and_a_type_for_both_entry_points() -> None:
    defaults = load("defaults/main.yml")
    specs = load("meta/argument_specs.yml")["argument_specs"]
    for name in ("hosttune_rollout_perf_gate", "hosttune_rollout_perf_window_seconds",
                 "hosttune_rollout_perf_min_requests", "hosttune_rollout_perf_on_no_traffic",
                 "hosttune_rollout_ttft_p95_max_increase_pct", "hosttune_rollout_tokens_per_second_max_drop_pct",
                 "hosttune_rollout_error_share_max_increase_pct"):
        assert name in defaults
        for entry in ("main", "rollout"):
            assert specs[entry]["options"][name]["default"] == defaults[name]
    assert specs["rollout"]["options"]["hosttune_rollout_perf_on_no_traffic"]["choices"] == ["pass", "fail"]


def test_the_gate_reads_before_the_change_and_judges_before_the_worker_check() -> None:
    tasks = load("tasks/rollout.yml")
    block = next(t for t in tasks if "block" in t and "rescue" in t)
    names = [t["name"] for t in block["block"]]
    before = names.index("Performance gate - the window before the new policy")
    after = names.index("Performance gate - a full window of traffic under the new policy")
    judged = names.index("Performance gate - p95 TTFT and tokens/s before and after")
    assert before < names.index("Deploy the policy files and the daemon config")
    assert names.index("Reload the daemon (SIGHUP applies the difference)") < after < judged
    assert judged < names.index("Health gate - the worker through the API")
    by_name = {t["name"]: t for t in block["block"]}
    for name in (names[before], names[after]):
        task = by_name[name]
        assert task["no_log"] is True
        assert "/v1/performance?seconds={{ hosttune_rollout_perf_window_seconds | int }}" in \
            task["ansible.builtin.uri"]["url"]
    # the after window waits for the worker in service, a full window, and a window opened after the reload
    until = by_name[names[after]]["until"]
    assert "worker_ready" in until and "window_s" in until and "__hosttune_perf_before.json.now" in until
    judge = by_name[names[judged]]
    assert "hosttune_perf_verdict(" in judge["vars"]["__hosttune_perf_verdict"]
    assert judge["ansible.builtin.assert"]["that"] == "__hosttune_perf_verdict.ok"
    assert "error_share_max_increase_pct=hosttune_rollout_error_share_max_increase_pct" in \
        judge["vars"]["__hosttune_perf_verdict"]
    # a failed gate lands in the rescue, which puts the host back and names the failed task and its message
    rescue = yaml.safe_dump(block["rescue"])
    assert "Put the host back on its previous policy" in rescue and "ansible_failed_result.msg" in rescue


def test_a_timed_out_after_window_is_reported_without_the_token() -> None:
    tasks = load("tasks/rollout.yml")
    block = next(t for t in tasks if "block" in t and "rescue" in t)["block"]
    names = [t["name"] for t in block]
    after = names.index("Performance gate - a full window of traffic under the new policy")
    wait, report = block[after], block[after + 1]
    # the uri task (token, no_log) does not fail the block itself: the next task, which holds no token, does
    assert wait["register"] == "__hosttune_perf_after" and wait["ignore_errors"] is True and wait["no_log"] is True
    assert report["name"] == "Performance gate - the window under the new policy is complete"
    assert report["ansible.builtin.assert"]["that"] == "__hosttune_perf_after is succeeded"
    assert "no_log" not in report and report["when"] == wait["when"]
    assert "__hosttune_token" not in yaml.safe_dump(report) and "Bearer" not in yaml.safe_dump(report)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    timed_out = {"failed": True, "attempts": 180, "status": 200,
                 "json": {"worker_ready": False, "window_s": 0, "since": 1700000100.0, "requests": 0, "failed": 0,
                          "rejected": 0, "now": 1700000400.0}}
    values = {"__hosttune_perf_after": timed_out, "__hosttune_perf_before": {"json": {"now": 1700000000.0}},
              "hosttune_rollout_perf_window_seconds": 60}
    figures = env.from_string(report["vars"]["__hosttune_perf_window_figures"]).render(**values)
    msg = env.from_string(report["ansible.builtin.assert"]["fail_msg"]).render(
        **values, __hosttune_perf_window_figures=figures)
    assert msg.startswith("no full window of traffic under the new policy after 180 tries: HTTP 200, ")
    for shown in ("worker_ready=False", "window_s=0 of 60", "since=1700000100.0",
                  "(before the change: now=1700000000.0)", "requests=0", "failed=0", "rejected=0"):
        assert shown in msg, msg
    # a reply that never came (connection refused) still renders
    refused = env.from_string(report["vars"]["__hosttune_perf_window_figures"]).render(
        **(values | {"__hosttune_perf_after": {"failed": True, "status": -1}}))
    assert "HTTP -1" in refused and "worker_ready=n/a" in refused and "requests=n/a" in refused
