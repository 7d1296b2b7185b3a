"""The memory-fit advisor against real GGUF files: the bundled SmolLM2-135M and files written with gguf's own
GGUFWriter. Expected values are computed here from the metadata read with gguf directly and ggml's block table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader

from agent.errors import InputError
from agent.worker.fit import device_memory, kv_bytes_per_token, plan_fit
from agent.worker.gguf_meta import read_gguf
from tests.support.worker_facts import GiB, one_node_vm, two_socket_server, write_gguf

# ggml storage per value, written out from ggml's type traits (block size, bytes per block).
BYTES_PER_VALUE = {"f32": Fraction(4), "f16": Fraction(2), "bf16": Fraction(2), "q8_0": Fraction(34, 32),
                   "q4_0": Fraction(18, 32), "q4_1": Fraction(20, 32), "iq4_nl": Fraction(18, 32),
                   "q5_0": Fraction(22, 32), "q5_1": Fraction(24, 32)}


def bundled_model() -> Path:
    from agent.model_files import default_model_path

    try:
        return default_model_path()
    except InputError as e:
        pytest.skip(f"bundled model not installed: {e}")


def field(reader: GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


def test_bundled_model_sizes_match_the_file() -> None:
    path = bundled_model()
    reader = GGUFReader(str(path))
    tensor_data = path.stat().st_size - reader.data_offset  # everything after the header is tensor data
    info = read_gguf(path)
    assert abs(info.weight_bytes - tensor_data) <= 0.02 * tensor_data
    label = str(field(reader, "general.size_label"))  # "135M"
    assert label.endswith("M")
    assert abs(info.parameter_count - float(label[:-1]) * 1e6) <= 0.05 * float(label[:-1]) * 1e6


def test_bundled_model_kv_per_token_matches_layer_and_head_metadata() -> None:
    path = bundled_model()
    reader = GGUFReader(str(path))
    arch = str(field(reader, "general.architecture"))
    n_layer = int(field(reader, f"{arch}.block_count"))
    n_head = int(field(reader, f"{arch}.attention.head_count"))
    n_head_kv = int(field(reader, f"{arch}.attention.head_count_kv"))
    head_dim = int(field(reader, f"{arch}.embedding_length")) // n_head
    info = read_gguf(path)
    for cache_type, bpv in BYTES_PER_VALUE.items():
        expected = 2 * n_layer * n_head_kv * head_dim * bpv  # K and V, every layer, every KV head
        assert kv_bytes_per_token(info, cache_type, cache_type) == expected, cache_type
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims -> 23040 bytes per token in f16
    assert kv_bytes_per_token(info) == 2 * 30 * 3 * 64 * 2


def test_key_and_value_lengths_and_gqa(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "m.gguf"))
    assert (info.n_layer, info.n_head_kv, info.head_dim_k, info.head_dim_v) == (4, 2, 64, 48)
    assert info.parameter_count == 2 * 1000 * 256
    assert info.weight_bytes == 1000 * 256 * 2 + 1000 * 256 * 4
    # f16: per layer 2 heads x (64 + 48) values x 2 bytes
    assert kv_bytes_per_token(info) == 4 * 2 * (64 + 48) * 2
    # q8_0 stores whole 32-value blocks of 34 bytes: K rows 128 values -> 4 blocks, V rows 96 -> 3 blocks
    assert kv_bytes_per_token(info, "q8_0", "q8_0") == 4 * (4 * 34 + 3 * 34)
    assert kv_bytes_per_token(info, "f16", "q4_0") == 4 * (128 * 2 + 3 * 18)


def test_head_dim_defaults_to_embedding_over_heads(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "m.gguf", key_length=None, value_length=None, n_embd=512, n_head=8))
    assert info.head_dim_k == info.head_dim_v == 64


def test_fit_budget_arithmetic() -> None:
    path = bundled_model()
    info = read_gguf(path)
    facts = one_node_vm(free=4 * GiB)
    device = device_memory(facts, "cpu")
    assert device.free_bytes == 4 * GiB
    report = plan_fit(info, device, headroom_pct=10)
    budget = int(4 * GiB * 0.9)
    assert report.budget_bytes == budget
    assert report.kv_budget_bytes == budget - info.weight_bytes - report.overhead_bytes
    per_token = 2 * 30 * 3 * 64 * 2
    assert report.kv_bytes_per_token["f16"] == per_token
    # llama.cpp pads the context to 256 cells: the context that fits is the largest such multiple
    assert report.max_tokens["f16"] == report.kv_budget_bytes // per_token // 256 * 256
    assert report.max_tokens["q4_0"] > report.max_tokens["q8_0"] > report.max_tokens["f16"] > report.max_tokens["f32"]
    for opt in report.options:
        assert opt.ctx_total == opt.ctx_per_slot * opt.parallel and opt.ctx_per_slot % 256 == 0
        assert opt.kv_bytes == opt.ctx_total * per_token
        assert opt.ctx_per_slot <= 8192  # the model's training context caps a slot
    rec = report.recommended
    assert rec is not None and rec.parallel == 4 and rec.ctx_per_slot == 8192
    assert report.hugepages_2m == math.ceil(info.weight_bytes / (2 * 1024 * 1024))
    assert report.seed_rule_ok


def test_fit_when_memory_is_tight() -> None:
    info = read_gguf(bundled_model())
    free = int(info.weight_bytes * 1.4)
    report = plan_fit(info, device_memory(one_node_vm(free=free), "cpu"), headroom_pct=0)
    assert not report.seed_rule_ok and any("1.5x" in n for n in report.notes)
    # what is left after weights and buffers is split among slots, each a multiple of 256 tokens
    for opt in report.options:
        assert info.weight_bytes + report.overhead_bytes + opt.kv_bytes <= report.budget_bytes
        assert (opt.ctx_per_slot + 256) * opt.parallel * report.kv_bytes_per_token_selected > report.kv_budget_bytes \
            or opt.ctx_per_slot == 8192
    check = plan_fit(info, device_memory(one_node_vm(free=free), "cpu"), headroom_pct=0, ctx=100_000, parallel=2)
    assert check.requested is not None and not check.requested.fits
    # as llama.cpp allocates it: -c 100000 pads to 100096, each of 2 slots 50048 -> 50176 cells
    assert check.requested.kv_bytes == 2 * 50176 * 23040


def test_device_memory_choices() -> None:
    server = two_socket_server(node0_free=100 * GiB, node1_free=50 * GiB)
    assert device_memory(server, "cpu:1").free_bytes == 50 * GiB
    assert device_memory(server, "gpu:5").free_bytes == 79 * GiB
    with pytest.raises(InputError) as e:
        device_memory(server, "gpu:9")
    assert e.value.field == "--device"
    with pytest.raises(InputError):
        device_memory(server, "tpu")


def test_gpu_seed_rule(tmp_path: Path) -> None:
    info = read_gguf(write_gguf(tmp_path / "m.gguf"))
    server = two_socket_server()
    report = plan_fit(info, device_memory(server, "gpu:0"))
    assert report.seed_rule_ok and report.device.name == "gpu:0"
    assert report.overhead_bytes > 512 * 1024 * 1024  # a GPU pays for its CUDA context


def test_broken_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"\x00garbage-not-gguf\xff" * 3)
    with pytest.raises(InputError) as e:
        read_gguf(bad)
    assert str(bad) in str(e.value)


@pytest.mark.process
def test_fit_cli_json(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf")
    out = subprocess.run([sys.executable, "-m", "agent", "fit", str(path), "--json", "--ctx", "2048",
                          "--parallel", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["kv_bytes_per_token"]["f16"] == 4 * 2 * (64 + 48) * 2
    assert data["requested"]["ctx_total"] == 2048 and data["requested"]["fits"] is True
    assert data["weight_bytes"] == 1000 * 256 * 6


@pytest.mark.process
def test_fit_cli_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"nope")
    out = subprocess.run([sys.executable, "-m", "agent", "fit", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("hosttune: error: ") and str(bad) in out.stderr


def _gguf_with(path: Path, **kv: int) -> Path:
    """A small GGUF whose listed architecture keys are uint64 values (a hostile file can say anything)."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "qwen2")
    values = {"block_count": 4, "embedding_length": 256, "attention.head_count": 8,
              "attention.head_count_kv": 2, "context_length": 4096, **kv}
    for key, value in values.items():
        w.add_uint64(f"qwen2.{key}", value)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("key", ["block_count", "embedding_length", "attention.head_count",
                                 "attention.head_count_kv", "attention.key_length", "context_length"])
def test_hostile_gguf_dimensions_are_refused_before_any_allocation(tmp_path: Path, key: str) -> None:
    """A model file saying block_count = 2**33 made read_gguf build a per-layer list of 2**33 entries (64 GiB:
    MemoryError, or the OOM killer, in `fit` and in the root daemon's worker preparation). Implausible sizes are
    bad input, refused before anything is sized from them; the address-space limit proves no huge allocation."""
    import resource

    path = _gguf_with(tmp_path / "evil.gguf", **{key: 1 << 33})
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(8 << 30, hard) if hard != resource.RLIM_INFINITY else 8 << 30,
                                            hard))
    try:
        with pytest.raises(InputError, match="implausible"):
            read_gguf(path)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_hostile_per_layer_array_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """A per-layer array is decoded into a Python list: one of 10**6 entries (a few MiB of file; a hostile model
    can hold far more) is refused by its length, before any list is built from it."""
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "evil.gguf"
    w = GGUFWriter(str(path), "qwen2")
    w.add_block_count(4)
    w.add_embedding_length(256)
    w.add_head_count(8)
    w.add_array("qwen2.attention.head_count_kv", [2] * 1_000_000)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InputError, match="implausible"):
        read_gguf(path)
