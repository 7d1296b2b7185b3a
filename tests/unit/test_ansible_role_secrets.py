"""The Ansible role, read as data: every task that touches the API or scrape token has no_log: true (a lint of its own,
ansible-lint has no such rule), and a non-loopback API address turns on allow_remote only when asked to."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROLE = Path(__file__).resolve().parents[2] / "ansible/roles/hosttune"
TOKEN_VARS = re.compile(r"\b(__hosttune_token|hosttune_api_token|__hosttune_token_file|hosttune_metrics_token)\b")
NOT_SENT = {"name", "when", "loop_control", "notify", "register"}  # keys that never reach a log as values


def tasks_in(items: list[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    for task in items or []:
        if "block" in task:
            for key in ("block", "rescue", "always"):
                yield from tasks_in(task.get(key))
        else:
            yield task


def role_tasks() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted([*(ROLE / "tasks").glob("*.yml"), *(ROLE / "handlers").glob("*.yml")]):
        for task in tasks_in(yaml.safe_load(path.read_text())):
            yield f"{path.relative_to(ROLE)}: {task.get('name')}", task


def test_every_task_carrying_the_token_has_no_log() -> None:
    carrying = []
    for where, task in role_tasks():
        sent = yaml.safe_dump({k: v for k, v in task.items() if k not in NOT_SENT})
        if TOKEN_VARS.search(sent):
            carrying.append(where)
            assert task.get("no_log") is True, f"{where} carries the API token without no_log: true"
    assert len(carrying) >= 4, carrying  # the token file read, its deployment, and the two API health gates


def render(expr: str, **values: Any) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["bool"] = lambda v: v if isinstance(v, bool) else str(v).lower() in ("true", "yes", "1", "on")
    env.filters["int"] = int
    return env.from_string(expr).render(**values)


def _validate_task(name_part: str) -> dict[str, Any]:
    return next(t for t in yaml.safe_load((ROLE / "tasks/validate.yml").read_text()) if name_part in t["name"])


@pytest.mark.parametrize(("host", "allow", "ok"), [
    ("127.0.0.1", False, True), ("::1", False, True), ("localhost", False, True),
    ("0.0.0.0", False, False), ("10.1.2.3", False, False), ("10.1.2.3", True, True)])
def test_non_loopback_api_host_fails_validation_unless_allow_remote(host: str, allow: bool, ok: bool) -> None:
    task = _validate_task("non-loopback API address")
    results = [render("{{ " + cond + " }}", hosttune_api_host=host, hosttune_api_allow_remote=allow) == "True"
               for cond in task["ansible.builtin.assert"]["that"]]
    assert all(results) is ok
    assert "hosttune_api_allow_remote" in task["ansible.builtin.assert"]["fail_msg"]


def test_allow_remote_in_the_daemon_config_comes_only_from_the_variable() -> None:
    expr = yaml.safe_load((ROLE / "vars/main.yml").read_text())["__hosttune_daemon_base"]["api"]["allow_remote"]
    assert render(expr, hosttune_api_host="10.1.2.3", hosttune_api_allow_remote=False) == "False"
    assert render(expr, hosttune_api_host="127.0.0.1", hosttune_api_allow_remote=True) == "True"
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    assert defaults["hosttune_api_allow_remote"] is False


def test_the_role_creates_the_worker_user_and_configures_it() -> None:
    users = [t for _, t in role_tasks() if "ansible.builtin.user" in t]
    assert len(users) == 1
    args = users[0]["ansible.builtin.user"]
    assert args["name"] == "{{ hosttune_worker_user }}" and args["system"] is True
    assert args["shell"] == "/usr/sbin/nologin" and args["create_home"] is False
    base = yaml.safe_load((ROLE / "vars/main.yml").read_text())["__hosttune_daemon_base"]
    assert base["worker"]["user"] == "{{ hosttune_worker_user }}"
    assert yaml.safe_load((ROLE / "defaults/main.yml").read_text())["hosttune_worker_user"] == "hosttune-worker"
