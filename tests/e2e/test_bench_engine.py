"""`hosttune bench` with the real engine: a load level through the gateway, and a two-point --sweep that restarts
a private llama-server per point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.slow]
HOSTTUNE = [sys.executable, "-m", "agent"]


def test_sweep_restarts_the_engine_per_point_and_picks_the_best(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    r = subprocess.run([*HOSTTUNE, "bench", "--sweep", "np=1,2", "--base-knobs", "c=2048", "--concurrency", "2",
                        "--requests", "4", "--warmup", "0", "--mix", "chat", "--max-tokens", "16", "--ignore-eos",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [p["knobs"] for p in report["points"]] == [{"np": "1"}, {"np": "2"}]
    for p in report["points"]:
        assert "error" not in p, p
        (lv,) = p["levels"]
        assert lv["ok"] == 4 and lv["output_tokens"] == 4 * 16 and lv["errors"] == {}
        assert p["restart_s"] > 0
    best = report["best"]
    assert best["tokens_per_s"] == max(p["levels"][0]["tokens_per_s"] for p in report["points"])
    assert "best:" in r.stdout and "np=1" in r.stdout and "np=2" in r.stdout
    assert "sweep point np=2: done" in r.stderr
