"""The role's remote-scrape pieces, read and rendered as data: the filters that check every value bound for the
unit drop-in and the Prometheus files (filter_plugins/hosttune_scrape.py), the drop-in template, and the asserts
that refuse a remote API without scrape sources. The real role against a real fleet: tests/e2e/test_fleet_prometheus.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from tests.support.source_module import role_filter

ROLE = Path(__file__).resolve().parents[2] / "ansible/roles/hosttune"


F = role_filter("hosttune_scrape")
ScrapeValueError = F.ScrapeValueError


def env() -> jinja2.Environment:
    e = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                           loader=jinja2.FileSystemLoader(ROLE / "templates"))
    e.filters.update(F.FilterModule().filters())
    e.filters["bool"] = bool
    e.filters["type_debug"] = lambda v: type(v).__name__
    e.filters["string"] = str
    e.tests["match"] = lambda v, pattern: re.match(pattern, v) is not None
    return e


def render_dropin(sources: list[Any], api_host: str = "198.18.0.11") -> str:
    return env().get_template("scrape.conf.j2").render(
        ansible_managed="managed", hosttune_scrape_sources=sources, hosttune_api_host=api_host)


# ---- scrape sources -> the unit drop-in --------------------------------------------------------------------------
def test_sources_are_canonical_and_the_api_address_is_added() -> None:
    assert F.scrape_sources(["198.18.0.1", "10.0.0.0/8", "2001:DB8::1", "198.18.0.1"], "198.18.0.11") == [
        "10.0.0.0/8", "198.18.0.1", "198.18.0.11", "2001:db8::1"]
    # loopback and wildcard binds add nothing (localhost is in the unit already; a wildcard is no address)
    for api_host in ("127.0.0.1", "0.0.0.0", "::", "::1", "myhost.example", None):
        assert F.scrape_sources(["198.18.0.1"], api_host) == ["198.18.0.1"]


@pytest.mark.parametrize("bad", [
    "198.18.0.1\nExecStartPre=/bin/sh -c id",   # a second directive smuggled into the unit
    "", "any", "localhost", "10.0.0.1/8",      # empty would reset the allow-list; host bits set in a CIDR
    "fe80::1%eth0", "198.18.0.256", "10.0.0.0/33", " 10.0.0.1", "10.0.0.1 ", 123, None, ["10.0.0.1"],
    # as wide as `any` (IPAddressAllow=0.0.0.0/0 cancels the unit's IPAddressDeny=any) or around the IPv4 checks
    "0.0.0.0/0", "::/0", "0.0.0.0", "::", "0.0.0.0/8", "8.0.0.0/7", "2000::/31", "::ffff:0:0/96",
    "::ffff:10.0.0.1", "::ffff:0:0/95", "::/96", "::10.0.0.1", "10.0.0.0\n"])
def test_anything_but_an_address_or_cidr_is_refused(bad: Any) -> None:
    assert F.bad_scrape_sources([bad]) != []
    with pytest.raises(ScrapeValueError, match="hosttune_scrape_sources"):
        F.scrape_sources(["198.18.0.1", bad])
    with pytest.raises(ScrapeValueError):
        render_dropin(["198.18.0.1", bad])


def test_the_widest_sources_still_allowed() -> None:
    assert F.scrape_sources(["10.0.0.0/8", "2001:db8::/32", "::1", "127.0.0.1"]) == [
        "10.0.0.0/8", "127.0.0.1", "2001:db8::/32", "::1"]


def test_no_sources_or_too_many_is_refused() -> None:
    with pytest.raises(ScrapeValueError, match="1 to 64"):
        F.scrape_sources([])
    with pytest.raises(ScrapeValueError, match="1 to 64"):
        F.scrape_sources([f"10.0.{i // 250}.{i % 250}" for i in range(65)])
    assert F.bad_scrape_sources("10.0.0.1") != []  # a string is not a list of sources


def test_the_dropin_adds_to_the_allow_list_and_never_resets_it() -> None:
    text = render_dropin(["198.18.0.1", "fd00::/64"])
    service = text.split("[Service]\n", 1)[1]
    assert service.splitlines() == ["IPAddressAllow=198.18.0.1", "IPAddressAllow=198.18.0.11",
                                    "IPAddressAllow=fd00::/64"]
    directives = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "IPAddressAllow=" not in directives and not any(d.startswith("IPAddressDeny") for d in directives)


# ---- the role's asserts ------------------------------------------------------------------------------------------
def validate_task(name_part: str) -> dict[str, Any]:
    tasks = yaml.safe_load((ROLE / "tasks/validate.yml").read_text())
    return next(t for t in tasks if name_part in t["name"])


def holds(task: dict[str, Any], **values: Any) -> bool:
    e = env()
    return all(e.from_string("{{ " + cond + " }}").render(**values) == "True"
               for cond in task["ansible.builtin.assert"]["that"])


@pytest.mark.parametrize(("allow", "sources", "ok"), [
    (False, [], True), (False, ["10.0.0.1"], True), (True, ["10.0.0.1"], True), (True, [], False)])
def test_a_remote_api_without_scrape_sources_is_refused(allow: bool, sources: list[str], ok: bool) -> None:
    task = validate_task("remote API names who may reach it")
    assert holds(task, hosttune_api_allow_remote=allow, hosttune_scrape_sources=sources) is ok
    assert "hosttune_scrape_sources" in task["ansible.builtin.assert"]["fail_msg"]


@pytest.mark.parametrize(("sources", "ok"), [
    (["198.18.0.1", "10.0.0.0/8", "::1"], True), (["198.18.0.1\nX=1"], False), (["a.b.c.d"], False),
    (["10.0.0.1/8"], False), ("10.0.0.1", False)])
def test_the_sources_assert(sources: Any, ok: bool) -> None:
    assert holds(validate_task("scrape sources"), hosttune_scrape_sources=sources) is ok


def test_allow_remote_stays_off_by_default_and_sources_empty() -> None:
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    assert defaults["hosttune_api_allow_remote"] is False
    assert defaults["hosttune_scrape_sources"] == [] and defaults["hosttune_metrics_token"] == ""


# ---- the Prometheus side: file_sd ---------------------------------------------------------------------------------
def host(name: str = "h1", api_host: str = "198.18.0.11", port: Any = 7711, policy: str = "fleet-a",
         ansible_host: str = "198.18.0.11") -> dict[str, Any]:
    return {"host": name, "api_host": api_host, "ansible_host": ansible_host, "port": port, "policy": policy}


def test_file_sd_has_one_target_group_per_host() -> None:
    groups = F.file_sd([host(), host("h2", "2001:db8::2", "7712", "fleet-b"),
                        host("h3", "0.0.0.0", ansible_host="node3.example")])
    assert groups == [
        {"targets": ["198.18.0.11:7711"], "labels": {"host": "h1", "inventory_policy": "fleet-a"}},
        {"targets": ["[2001:db8::2]:7712"], "labels": {"host": "h2", "inventory_policy": "fleet-b"}},
        {"targets": ["node3.example:7711"], "labels": {"host": "h3", "inventory_policy": "fleet-a"}},
    ]
    assert json.loads(json.dumps(groups)) == groups


@pytest.mark.parametrize(("entry", "field"), [
    (host(api_host="127.0.0.1"), "hosttune_api_host"),      # Prometheus cannot reach a loopback API
    (host(api_host="127.0.0.2"), "hosttune_api_host"), (host(api_host="::ffff:127.0.0.1"), "hosttune_api_host"),
    (host(api_host="169.254.169.254"), "hosttune_api_host"),  # the cloud metadata service would get the token
    (host(api_host="fe80::1"), "hosttune_api_host"), (host(api_host="224.0.0.1"), "hosttune_api_host"),
    (host(api_host="::ffff:169.254.169.254"), "hosttune_api_host"), (host(api_host="LOCALHOST"), "hosttune_api_host"),
    (host(api_host="0.0.0.0", ansible_host="0.0.0.0"), "hosttune_api_host"),
    (host(api_host="::", ansible_host="metrics.localhost"), "hosttune_api_host"),
    (host(api_host="198.18.0.11:80"), "hosttune_api_host"),
    (host(api_host='x"; evil'), "hosttune_api_host"),
    (host(api_host="0.0.0.0", ansible_host="bad host"), "hosttune_api_host"),
    (host(port=0), "hosttune_api_port"), (host(port="80\n"), "hosttune_api_port"),
    (host(port=True), "hosttune_api_port"),
    (host(policy='a"b'), "hosttune_policy"), (host(policy="x" * 200), "hosttune_policy"),
    (host(name="h1\n"), "inventory name"),
])
def test_file_sd_refuses_values_outside_the_allow_lists(entry: dict[str, Any], field: str) -> None:
    with pytest.raises(ScrapeValueError, match=field):
        F.file_sd([entry])


def test_target_labels_never_shadow_a_scraped_label() -> None:
    # Prometheus renames a scraped label that a target label also sets (to exported_*): hosttune_policy_info's
    # `policy` must reach the TSDB as itself, or group_left(policy) joins copy the inventory's name.
    scraped = {"policy", "digest", "engine", "model", "version", "gpu", "knob", "slo", "le", "quantile"}
    for group in F.file_sd([host(), host("h2", policy="other")]):
        assert not scraped & set(group["labels"]), group["labels"]
        assert group["labels"]["inventory_policy"] in ("fleet-a", "other")


def test_the_prometheus_tasks_keep_the_token_in_a_0600_file() -> None:
    tasks = {t["name"]: t for t in yaml.safe_load((ROLE / "tasks/prometheus.yml").read_text())}
    token = next(t for n, t in tasks.items() if "scrape token (readable" in n)
    assert token["ansible.builtin.copy"]["mode"] == "0600" and token["no_log"] is True
    job = next(t for t in tasks.values() if "scrape config" in t["name"])["vars"]["__hosttune_scrape_job"]
    assert job["job_name"] == "hosttune"
    assert job["authorization"] == {"type": "Bearer",
                                    "credentials_file": "{{ hosttune_prometheus_dir }}/metrics.token"}
    assert job["file_sd_configs"][0]["files"] == ["{{ hosttune_prometheus_dir }}/targets.json"]


def prometheus_task(name_part: str) -> dict[str, Any]:
    return next(t for t in yaml.safe_load((ROLE / "tasks/prometheus.yml").read_text()) if name_part in t["name"])


PROMETHEUS_INPUTS = {"hosttune_prometheus_scrape_interval": "15s", "hosttune_prometheus_dir": "/etc/prometheus/ht",
                     "hosttune_prometheus_user": "prometheus", "hosttune_prometheus_targets_group": "fleet",
                     "groups": {"fleet": ["h1"]}}


@pytest.mark.parametrize("field", ["hosttune_prometheus_scrape_interval", "hosttune_prometheus_dir",
                                   "hosttune_prometheus_user"])
def test_the_prometheus_inputs_refuse_a_trailing_newline(field: str) -> None:
    task = prometheus_task("Prometheus inputs")
    assert holds(task, **PROMETHEUS_INPUTS)
    assert not holds(task, **{**PROMETHEUS_INPUTS, field: PROMETHEUS_INPUTS[field] + "\n"})


def test_the_scrape_token_refuses_a_trailing_newline() -> None:
    task = prometheus_task("Check the scrape token")
    assert holds(task, hosttune_metrics_token="a" * 32)
    assert not holds(task, hosttune_metrics_token="a" * 32 + "\n")
    assert not holds(validate_task("metrics (scrape) token"), hosttune_metrics_token="a" * 32 + "\n")
    assert not holds(validate_task("policy"), hosttune_policy="fleet-a\n")


SCRAPE_TOKEN, API_TOKEN = "s" * 32, "a" * 32


@pytest.mark.parametrize(("allow", "metrics", "api", "ok"), [
    (False, "", "", True), (False, SCRAPE_TOKEN, API_TOKEN, True), (True, SCRAPE_TOKEN, "", True),
    (True, SCRAPE_TOKEN, API_TOKEN, True),
    (True, "", API_TOKEN, False),                 # a remote /metrics open to every scrape source
    (True, API_TOKEN, API_TOKEN, False), (False, API_TOKEN, API_TOKEN, False)])  # the scraper could retune
def test_a_remote_api_needs_a_scrape_token_of_its_own(allow: bool, metrics: str, api: str, ok: bool) -> None:
    task = validate_task("scrape token of its own")
    assert holds(task, hosttune_api_allow_remote=allow, hosttune_metrics_token=metrics, hosttune_api_token=api) is ok
    assert "hosttune_metrics_token" in task["ansible.builtin.assert"]["fail_msg"] and task["no_log"] is True
