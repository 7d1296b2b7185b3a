"""The torch worker's weights arena (agent/worker/torch_server/arena.py) and how worker.weights reaches it."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from agent.errors import InputError
from agent.policy.model import WorkerSpec
from agent.worker.torch_engine import TorchEngine
from agent.worker.torch_server.__main__ import parse_args
from agent.worker.torch_server.arena import ALIGN, HUGE_PAGE, pack_weights


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.mid = torch.nn.Linear(8, 3)
        self.head = torch.nn.Linear(8, 50, bias=False)
        self.head.weight = self.emb.weight  # tied, as SmolLM2's lm_head and embeddings are


def test_pack_moves_every_parameter_into_one_aligned_arena_keeping_values_and_ties() -> None:
    torch.manual_seed(0)
    model = Tied()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 50, (2, 5))
    out_before = model.mid(model.emb(x))
    arena = pack_weights(model, "thp")
    assert arena.mode == "thp" and arena.tensors == 3  # emb (= head), mid.weight, mid.bias
    assert arena.weight_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert arena._map is not None
    start = ctypes.addressof(ctypes.c_char.from_buffer(arena._map))
    first = min(p.data_ptr() for p in model.parameters())
    assert first % HUGE_PAGE == 0  # the arena's data begins on a 2 MiB boundary
    for name, p in model.named_parameters():
        assert start <= p.data_ptr() < start + arena.length and p.data_ptr() % ALIGN == 0, name
        assert torch.equal(p.detach(), before[name]), name
    assert model.head.weight is model.emb.weight
    assert torch.equal(model.mid(model.emb(x)), out_before)


def test_pack_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="thp, hugetlb"):
        pack_weights(Tied(), "anon")


def test_weights_backing_maps_to_the_torch_servers_arena_flags(tmp_path: Path) -> None:
    eng = TorchEngine(parent_death_signal=None, token_dir=tmp_path / "ctl")

    def argv(**weights: object) -> list[str]:
        return eng.launch(WorkerSpec(engine="torch", weights=weights), Path("/m.gguf"), None).argv

    assert "--weights-arena" not in argv()
    anon = argv(backing="anon", mlock=True)
    assert anon[anon.index("--weights-arena") + 1] == "thp" and "--mlock-weights" in anon
    pool = argv(backing="hugetlbfs")
    assert pool[pool.index("--weights-arena") + 1] == "hugetlb" and "--mlock-weights" not in pool
    with pytest.raises(InputError) as e:
        argv(backing="page_cache", mlock=True)
    assert e.value.field == "worker.weights.mlock"
    with pytest.raises(ValidationError, match="backing"):
        WorkerSpec(engine="torch", weights={"backing": "/dev/shm"})
    with pytest.raises(InputError) as e2:
        eng.launch(WorkerSpec(engine="torch", extra_args=["--weights-arena=thp"]), Path("/m.gguf"), None)
    assert e2.value.field == "worker.extra_args[0]"


def test_torch_server_mlock_needs_an_arena(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(InputError) as e:
        parse_args(["--model", str(model), "--port", "9000", "--mlock-weights"])
    assert e.value.field == "--mlock-weights"
    assert parse_args(["--model", str(model), "--port", "9000", "--weights-arena", "hugetlb"]).weights_arena == \
        "hugetlb"
