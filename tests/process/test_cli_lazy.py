"""`hosttune COMMAND` imports only that command's module (start-up time of the daemon, issue 8); the top-level
help and a mistyped command still see every command."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from agent.cli import COMMAND_MODULES, build_parser, chosen_command, register_command


def loaded_commands(argv: list[str]) -> list[str]:
    code = (f"import sys, agent.cli as c; c.build_parser({argv!r}); "
            "print(' '.join(sorted(m.split('.')[-1] for m in sys.modules if m.startswith('agent.commands.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.mark.parametrize("argv, expected", [
    (["daemon", "--config", "x.yaml"], "daemon"),
    (["inspect", "--procfs", "x", "--json"], "inspect"),
    (["install-unit", "--print"], "install_unit"),
    (["nosuch"], None),
    (["--help"], None),
    (["--", "daemon"], None),
])
def test_chosen_command(argv: list[str], expected: str | None) -> None:
    assert chosen_command(argv) == expected


def test_daemon_imports_only_its_own_command_module() -> None:
    assert loaded_commands(["daemon", "--check"]) == ["daemon"]
    assert "inspect" not in loaded_commands(["controller", "decisions"])


def test_top_level_help_and_a_typo_still_list_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert len(loaded_commands([])) >= len(COMMAND_MODULES) - 1   # tuning.py holds several commands' shared code
    parser = build_parser(["deamon"])
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["deamon"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'deamon'" in err and "'daemon'" in err and "'inspect'" in err


@pytest.mark.parametrize("name", COMMAND_MODULES)
def test_every_command_module_registers_its_command(name: str) -> None:
    """register_command imports each module by a plain import (one branch per name): none is missing or swapped."""
    sub = argparse.ArgumentParser().add_subparsers()
    register_command(name, sub)
    assert name.replace("_", "-") in sub.choices
    assert chosen_command([name.replace("_", "-")]) == name


def test_an_unknown_command_module_is_refused() -> None:
    with pytest.raises(KeyError):
        register_command("nosuch", argparse.ArgumentParser().add_subparsers())
