"""The daemon config: defaults, file values, HOSTTUNE_* overrides, and errors that say FILE:LINE: field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import DaemonSettings, config_path_from, load_settings
from agent.errors import InputError

HOSTTUNE = Path(sys.executable).parent / "hosttune"


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HOSTTUNE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "daemon.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    s = load_settings(None)
    assert s.api.host == "127.0.0.1" and s.api.allow_remote is False and s.api.unix_socket is None
    assert s.gateway.host == "127.0.0.1"
    assert s.revert_on_stop is False and s.reapply_on_drift is False
    assert s.state_dir == Path("/var/lib/hosttune")
    assert s.token_path == Path("/var/lib/hosttune/api.token")
    assert s.audit_path == Path("/var/lib/hosttune/audit.log")
    assert s.policy is None


def test_file_values_and_relative_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "policy: policies/mine.yaml\nstate_dir: state\napi:\n  port: 7799\n"
                           "  unix_socket: run/api.sock\ntoken_file: /etc/hosttune/token\n"
                           "worker: {enabled: false}\ntelemetry_interval_s: 2\n")
    s = load_settings(path)
    assert s.policy == str(tmp_path / "policies/mine.yaml")
    assert s.state_dir == tmp_path / "state"
    assert s.api.port == 7799 and s.api.unix_socket == tmp_path / "run/api.sock"
    assert s.token_path == Path("/etc/hosttune/token")
    assert s.audit_path == tmp_path / "state/audit.log"
    assert s.worker.enabled is False and s.telemetry_interval_s == 2


def test_a_policy_name_stays_a_name(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "policy: llm-latency\n")).policy == "llm-latency"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "policy: base\napi:\n  port: 7799\n")
    monkeypatch.setenv("HOSTTUNE_POLICY", "llm-latency")
    monkeypatch.setenv("HOSTTUNE_API__PORT", "7801")
    monkeypatch.setenv("HOSTTUNE_REVERT_ON_STOP", "true")
    s = load_settings(path)
    assert (s.policy, s.api.port, s.revert_on_stop) == ("llm-latency", 7801, True)


def test_unrelated_hosttune_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTTUNE_CACHE", "/x")
    monkeypatch.setenv("HOSTTUNE_CRASH_AFTER_WRITES", "3")
    assert load_settings(None).policy is None


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    ("policy: base\napi:\n  port: 7711\n  prot: 1\n", 4, "api.prot", "unknown setting (did you mean 'port'?)"),
    ("policy: base\nstate_dri: /x\n", 2, "state_dri", "unknown setting (did you mean 'state_dir'?)"),
    ("api:\n  host: 0.0.0.0\n", 2, "api.host", "not a loopback address"),
    ("gateway:\n  host: 10.1.2.3\n", 2, "gateway.host", "not a loopback address"),
    ("api:\n  host: example.com\n  allow_remote: false\n", 2, "api.host", "not a loopback address"),
    ("drift_check_s: -5\n", 1, "drift_check_s", "greater than or equal to 0"),
    ("\n\napi:\n  port: 70000\n", 4, "api.port", "less than or equal to 65535"),
    ("telemetry_interval_s: fast\n", 1, "telemetry_interval_s", "valid number"),
    ("worker:\n  enabled: maybe\n", 2, "worker.enabled", "valid boolean"),
    ("log_level: loud\n", 1, "log_level", "'debug', 'info', 'warning' or 'error'"),
])
def test_bad_values_name_file_line_and_field(tmp_path: Path, text: str, line: int, field: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_settings(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), line, field)
    assert message in e.value.message
    assert str(e.value).startswith(f"{path}:{line}: {field}: ")


def test_remote_bind_needs_allow_remote(tmp_path: Path) -> None:
    # a remote API also needs a scrape token (tests/unit/test_metrics_token.py)
    s = load_settings(write(tmp_path, "api:\n  host: 0.0.0.0\n  allow_remote: true\n  metrics_token_file: m.token\n"))
    assert s.api.host == "0.0.0.0"
    s = load_settings(write(tmp_path, "api:\n  host: '::1'\n"))
    assert s.api.host == "::1"


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "policy: base\napi:\n  port: [1, 2\n")
    with pytest.raises(InputError, match="YAML syntax error") as e:
        load_settings(path)
    assert e.value.path == str(path) and e.value.line is not None and e.value.line >= 3


def test_non_mapping_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"))
    assert load_settings(write(tmp_path, "# nothing\n", "empty.yaml")).policy is None


def test_config_is_read_like_a_policy_duplicate_keys_and_merge_keys_refused_at_their_line(tmp_path: Path) -> None:
    # One YAML reader for policies and the daemon config (agent.policy.yamlnodes): a second `api:` no longer
    # silently replaces the first.
    path = write(tmp_path, "policy: base\napi:\n  port: 7711\napi:\n  port: 7712\n")
    with pytest.raises(InputError, match="duplicate key 'api'") as e:
        load_settings(path)
    assert e.value.path == str(path) and e.value.line == 4
    with pytest.raises(InputError, match=r"merge keys \(<<\) are not supported in a config$") as e:
        load_settings(write(tmp_path, "base: &b {port: 1}\napi:\n  <<: *b\n", "merge.yaml"))
    assert e.value.line == 3


def test_null_document_is_an_empty_config(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "~\n")).policy is None


def test_bad_value_points_at_the_line_of_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, "policy: base\napi:\n  host: 127.0.0.1\n  port: many\n")
    with pytest.raises(InputError) as e:
        load_settings(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 4, "api.port")


def test_bad_environment_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTTUNE_API__PORT", "many")
    with pytest.raises(InputError) as e:
        load_settings(write(tmp_path, "api:\n  port: 7711\n"))
    assert e.value.path == "environment HOSTTUNE_API__PORT" and e.value.field == "api.port"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read config"):
        load_settings(tmp_path / "nope.yaml")


def test_config_path_precedence(tmp_path: Path) -> None:
    assert config_path_from("/a.yaml", env={"HOSTTUNE_CONFIG": "/b.yaml"}) == Path("/a.yaml")
    assert config_path_from(None, env={"HOSTTUNE_CONFIG": "/b.yaml"}) == Path("/b.yaml")


def test_model_is_the_documented_one() -> None:
    # docs/daemon.md documents every top-level key; keep them in step.
    doc = (Path(__file__).resolve().parents[2] / "docs/daemon.md").read_text()
    for name in DaemonSettings.model_fields:
        assert f"`{name}`" in doc, f"docs/daemon.md does not document {name}"


@pytest.mark.process
def test_cli_check_prints_one_line_error(tmp_path: Path) -> None:
    path = write(tmp_path, "api:\n  prot: 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTTUNE_")}
    r = subprocess.run([str(HOSTTUNE), "daemon", "--check", "--config", str(path)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 2
    assert r.stderr == f"hosttune: error: {path}:2: api.prot: unknown setting (did you mean 'port'?)\n"
    ok = write(tmp_path, "api:\n  port: 7712\n", "ok.yaml")
    r = subprocess.run([str(HOSTTUNE), "daemon", "--check", "--config", str(ok)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0 and "config OK" in r.stdout


def test_environment_values_shape() -> None:
    from agent.config import environment_values

    env = {"HOSTTUNE_API__PORT": "7801", "HOSTTUNE_WORKER__ENABLED": "false", "HOSTTUNE_CONFIG": "/x.yaml",
           "HOSTTUNE_CACHE": "/c", "HOSTTUNE_POLICY": "", "HOSTTUNE_GATEWAY": '{"port": 9000, "limit": 2}',
           "HOSTTUNE_GATEWAY__LIMIT": "3", "hosttune_log_level": "debug", "PATH": "/bin", "HOSTTUNE___X": "1"}
    assert environment_values(env) == {"api": {"port": "7801"}, "worker": {"enabled": "false"},
                                       "gateway": {"port": 9000, "limit": "3"}, "log_level": "debug"}


def test_unknown_nested_environment_setting_is_refused_with_its_name(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTTUNE_API__PROT", "7801")
    with pytest.raises(InputError) as e:
        load_settings(write(tmp_path, "policy: base\n"))
    assert e.value.path == "environment HOSTTUNE_API__PROT" and e.value.field == "api.prot"
    assert "did you mean 'port'" in e.value.message


def test_a_section_as_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTTUNE_API", '{"port": 7802}')
    assert load_settings(None).api.port == 7802
