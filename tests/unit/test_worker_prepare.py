"""Preparing a worker from a policy section: model resolution, placement, knobs sized by the fit advisor, and
rebuilding the launch for a changed spec (what restart(new_spec) and a daemon reload do)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from agent.policy.model import WeightsSpec, WorkerPlacement, WorkerSpec
from agent.worker.prepare import PreparedWorker, prepare_worker
from tests.support.worker_facts import GiB, one_node_vm, two_socket_server


@pytest.fixture(autouse=True)
def fake_llama_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exe = tmp_path / "bin" / "llama-server"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    monkeypatch.setenv("HOSTTUNE_LLAMA_SERVER", str(exe))
    return exe


def gguf_file(path: Path, n_layer: int = 2, ctx: int = 4096) -> Path:
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    w.add_embedding_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(1)
    w.add_context_length(ctx)
    w.add_vocab_size(500)
    w.add_tensor("token_embd.weight", np.zeros((500, 128), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def arg(argv: list[str], flag: str) -> str:
    """A llama-server flag's value, looking past the binding prefix (which ends with the last `--`)."""
    server = argv[len(argv) - argv[::-1].index("--"):] if "--" in argv else argv
    return server[server.index(flag) + 1]


def test_open_knobs_are_sized_and_set_ones_kept(tmp_path: Path) -> None:
    model = gguf_file(tmp_path / "m.gguf")
    prepared = prepare_worker(WorkerSpec(model=str(model)), one_node_vm(free=8 * GiB))
    assert prepared.fit is not None and prepared.info is not None
    rec = prepared.fit.recommended
    assert rec is not None and (prepared.spec.ctx, prepared.spec.parallel) == (rec.ctx_total, rec.parallel)
    assert prepared.spec.ctx == 4 * 4096  # 4 slots of the model's whole training context fit easily
    launch = prepared.build(prepared.spec)
    assert arg(launch.argv, "-c") == "16384" and arg(launch.argv, "-np") == "4" and arg(launch.argv, "-t") == "2"
    kept = prepare_worker(WorkerSpec(model=str(model), ctx=1024, parallel=2), one_node_vm())
    assert (kept.spec.ctx, kept.spec.parallel) == (1024, 2)
    only_parallel = prepare_worker(WorkerSpec(model=str(model), parallel=8), one_node_vm(free=8 * GiB))
    assert (only_parallel.spec.ctx, only_parallel.spec.parallel) == (8 * 4096, 8)


def test_build_follows_a_new_model_and_placement(tmp_path: Path) -> None:
    first = gguf_file(tmp_path / "a.gguf")
    second = gguf_file(tmp_path / "b.gguf", ctx=1024)
    prepared = prepare_worker(WorkerSpec(model=str(first), gpu_layers=0), two_socket_server())
    assert prepared.placement.node == 0  # most free memory (no disk known for tmp files here)
    changed = WorkerSpec(model=str(second), gpu_layers=0, placement=WorkerPlacement(numa_node=1))
    launch = prepared.build(changed)
    assert arg(launch.argv, "-m") == str(second)
    assert launch.placement is not None and launch.placement.node == 1 and launch.placement.cpus[0] == 4
    assert arg(launch.argv, "-c") == str(4 * 1024)  # sized again against the new model's context


def test_unreadable_model_is_left_to_the_engine(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"garbage")
    prepared = prepare_worker(WorkerSpec(model=str(bad)), one_node_vm())
    assert prepared.info is None and prepared.fit is None and prepared.spec.ctx is None
    assert any(str(bad) in n for n in prepared.notes)
    assert arg(prepared.build(prepared.spec).argv, "-m") == str(bad)


def test_command_engine_needs_no_model() -> None:
    prepared = prepare_worker(WorkerSpec(engine="command", argv=["/bin/true"]), two_socket_server())
    assert prepared.model is None and prepared.fit is None
    assert prepared.build(prepared.spec).argv[-1] == "/bin/true"


def model_arg(argv: list[str]) -> str:
    """llama-server's -m (the last one: the binding prefix runs `python -m agent.worker.bindexec`)."""
    return argv[len(argv) - argv[::-1].index("-m")]


def staged_worker(tmp_path: Path) -> tuple[Path, Path, WorkerSpec, PreparedWorker]:
    """A hugetlbfs-backed worker prepared on a GGUF, and a copy of it where staging would put one."""
    model = gguf_file(tmp_path / "m.gguf")
    staged = tmp_path / "hugetlb" / "model.gguf"
    staged.parent.mkdir()
    staged.write_bytes(model.read_bytes())
    spec = WorkerSpec(model=str(model), ctx=512, parallel=1, placement=WorkerPlacement(mode="none"),
                      weights={"backing": "hugetlbfs"})  # type: ignore[arg-type]
    return model, staged, spec, prepare_worker(spec, one_node_vm())


def test_the_engine_opens_the_staged_copy_while_the_spec_names_the_staged_model(tmp_path: Path) -> None:
    model, staged, spec, prepared = staged_worker(tmp_path)
    other = gguf_file(tmp_path / "other.gguf")
    assert model_arg(prepared.build(spec).argv) == str(model)
    prepared.staged_model = staged
    argv = prepared.build(spec).argv
    assert model_arg(argv) == str(staged) and "--load-mode" not in argv  # plain mmap: the default, not passed
    changed = prepared.build(spec.model_copy(update={"model": str(other)})).argv  # a reload to another model
    assert model_arg(changed) == str(other)
    unstaged = prepared.build(spec.model_copy(update={"weights": WeightsSpec(backing="page_cache")})).argv
    assert model_arg(unstaged) == str(model)


def test_mlock_above_the_memlock_limit_loads_unlocked_with_a_note(tmp_path: Path) -> None:
    facts = one_node_vm().model_copy(deep=True)
    facts.memory.mlock_limit_bytes = 4096
    spec = WorkerSpec(model=str(gguf_file(tmp_path / "m.gguf")), ctx=512, parallel=1,
                      placement=WorkerPlacement(mode="none"), weights={"mlock": True})  # type: ignore[arg-type]
    prepared = prepare_worker(spec, facts)
    assert prepared.spec.weights.mlock is False and "--load-mode" not in prepared.build(prepared.spec).argv
    assert any("memlock limit" in n for n in prepared.notes)


def test_torch_anon_weights_under_thp_never_says_they_cannot_be_in_huge_pages(tmp_path: Path) -> None:
    model = gguf_file(tmp_path / "m.gguf")
    spec = WorkerSpec(engine="torch", model=str(model), weights={"backing": "anon"})
    facts = one_node_vm()
    never = facts.model_copy(update={"thp": facts.thp.model_copy(update={"available": True, "enabled": "never"})})
    notes = prepare_worker(spec, never).notes
    assert any("THP is never" in n and "cannot be in huge pages" in n for n in notes), notes
    madvise = facts.model_copy(update={"thp": facts.thp.model_copy(update={"available": True, "enabled": "madvise"})})
    assert not any("huge pages" in n for n in prepare_worker(spec, madvise).notes)
    assert not any("huge pages" in n for n in prepare_worker(WorkerSpec(engine="torch", model=str(model)), never).notes)


def test_a_staged_copy_removed_under_the_worker_falls_back_to_the_gguf(tmp_path: Path) -> None:
    """A revert unstaged the copy while the worker ran: the next build launches on the original (H4)."""
    model, staged, spec, prepared = staged_worker(tmp_path)
    prepared.staged_model = staged
    assert model_arg(prepared.build(spec).argv) == str(staged)
    staged.unlink()  # `hosttune revert` / the API's revert unstaged it
    assert model_arg(prepared.build(spec).argv) == str(model)
    assert prepared.staged_model is None and any("gone" in n for n in prepared.notes)
