"""The operator pack's rules through Debian's real promtool: `promtool check rules` accepts the file and
`promtool test rules` passes every unit test under monitoring/prometheus/tests (each recording rule's value on
synthetic series, each alert firing and not firing). A broken expectation makes promtool fail, and so this test."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.prometheus_server import binary
from tests.support.promql_names import RULE_TESTS, RULES

pytestmark = [pytest.mark.prometheus]


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_rules_accepts_the_pack() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_test_rules_passes_every_rule_test() -> None:
    files = sorted(str(p) for p in RULE_TESTS.glob("*.yml"))
    assert len(files) >= 2
    done = promtool("test", "rules", *files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The rule tests can fail: the same recording test with one expected quantile changed is refused."""
    pack = tmp_path / "monitoring/prometheus"
    (pack / "tests").mkdir(parents=True)
    shutil.copy(RULES, pack / RULES.name)
    text = (RULE_TESTS / "recording.yml").read_text()
    assert text.count("value: 1.875}") == 1
    (pack / "tests/recording.yml").write_text(text.replace("value: 1.875}", "value: 1.9}"))
    done = promtool("test", "rules", str(pack / "tests/recording.yml"))
    assert done.returncode != 0
    assert "instance:hosttune_gateway_ttft_seconds:p95_rate5m" in done.stdout + done.stderr
