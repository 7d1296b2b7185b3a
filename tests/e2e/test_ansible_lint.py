"""Static checks of the Ansible content: ansible-lint (production profile), playbook syntax, and that the role's
documented defaults and its typed argument spec describe the same variables with the same defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
ROLE = ANSIBLE / "roles/hosttune"
VENV_BIN = Path(sys.executable).parent


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
               XDG_CACHE_HOME=str(tmp_path / "cache"), NO_COLOR="1")
    return env


@pytest.mark.slow
def test_ansible_lint_production_profile_passes(tmp_path: Path) -> None:
    exe = VENV_BIN / "ansible-lint"
    assert exe.exists(), "ansible-lint is a test dependency (pip install -e '.[test]')"
    proc = subprocess.run([str(exe), "--offline", "--nocolor"], cwd=ANSIBLE, capture_output=True, text=True,
                          timeout=600, env=_env(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Profile 'production' was required, and it passed" in out, out[-3000:]


@pytest.mark.parametrize("playbook", ["site.yml", "rollout.yml", "prometheus.yml"])
def test_playbook_syntax(playbook: str, tmp_path: Path) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text("[hosttune]\nh1 ansible_host=127.0.0.1\n")
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", str(inv), playbook],
                          cwd=ANSIBLE, capture_output=True, text=True, timeout=120, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_every_default_is_typed_and_every_typed_option_documented() -> None:
    defaults: dict[str, Any] = _load(ROLE / "defaults/main.yml")
    spec = _load(ROLE / "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert all(name.startswith("hosttune_") for name in defaults), "public variables are prefixed hosttune_"
    assert set(defaults) - set(spec) == set(), "defaults without a type in meta/argument_specs.yml"
    required = {name for name, opt in spec.items() if opt.get("required")}
    assert set(spec) - set(defaults) == required, "typed options must have a default unless required"
    for name, value in defaults.items():
        opt = spec[name]
        if isinstance(value, str) and "{{" in value:
            continue  # computed default (e.g. the role's own unit file)
        assert "default" in opt, f"{name}: default {value!r} missing from the spec"
        assert opt["default"] == value, f"{name}: spec default {opt['default']!r} != defaults {value!r}"


def test_rollout_entry_point_options_are_a_subset_of_main() -> None:
    specs = _load(ROLE / "meta/argument_specs.yml")["argument_specs"]
    main, rollout = specs["main"]["options"], specs["rollout"]["options"]
    assert set(rollout) <= set(main)
    for name in rollout:
        assert rollout[name] == main[name], f"{name} typed differently for the rollout entry point"
