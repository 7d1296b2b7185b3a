"""The torch worker's weights in transparent huge pages, on the real kernel: `hosttune worker run` with
`worker.weights.backing: anon` on the bundled SmolLM2-135M (fp32); the worker's own smaps_rollup, as the supervisor
reports it in the state file and `hosttune worker status --json`, shows AnonHugePages covering at least 90% of the
weight tensors' bytes (counted from the GGUF's tensors: fp32 is 4 bytes an element). THP `never` is set to
`madvise` for the test and restored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bench.llama_local import free_port
from agent.model_files import default_model_path
from tests.e2e.worker_run import WorkerRun

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.kernel, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (THP mode)")]
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.fixture
def thp_usable() -> Iterator[str]:
    if not THP.exists():
        pytest.skip("kernel without transparent huge pages")
    before = THP.read_text().split("[")[1].split("]")[0]
    if before == "never":
        THP.write_text("madvise")
    try:
        yield THP.read_text().split("[")[1].split("]")[0]
    finally:
        THP.write_text(before)
        assert before in THP.read_text().split("[")[1]


def weight_bytes_fp32(path: Path) -> int:
    from gguf import GGUFReader

    return sum(int(t.n_elements) for t in GGUFReader(path).tensors) * 4


def test_torch_weights_land_in_transparent_huge_pages(tmp_path: Path, thp_usable: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    weights = weight_bytes_fp32(default_model_path())
    run = WorkerRun(tmp_path, {"engine": "torch", "model": "default", "port": free_port(), "parallel": 1,
                               "dtype": "fp32", "weights": {"backing": "anon"}})
    try:
        st = run.wait(lambda s: s.get("state") == "ready", 400, "the torch worker to become ready")
        mem = st["memory"]
        assert mem["error"] is None and mem["pid"] == st["pid"], mem
        assert mem["thp_mode"] == thp_usable
        assert mem["anon_huge_bytes"] >= 0.9 * weights, (mem, weights)
        assert "--weights-arena" in st["argv"]
        out = subprocess.run([sys.executable, "-m", "agent", "worker", "status", "--json", "--state-dir",
                              str(run.state_dir)], capture_output=True, text=True, timeout=120)
        shown = json.loads(out.stdout)["memory"]
        assert shown["anon_huge_bytes"] >= 0.9 * weights and shown["weights_in_huge_pages"] == 1.0
    finally:
        rc = run.stop()
    assert rc == 0, run.output()
