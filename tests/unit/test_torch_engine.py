"""The torch engine adapter (argv, token file, which knobs are live), the control contract, and the sequence's
text handling (stop strings, held-back prefixes, incomplete UTF-8). None of these import torch."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.errors import InputError
from agent.policy.model import WorkerSpec
from agent.worker.engines import engine_for
from agent.worker.placement import Placement
from agent.worker.torch_control import ControlUpdate, parse_torch_metrics, read_token
from agent.worker.torch_engine import TorchEngine
from agent.worker.torch_server.sequence import Event, SamplingParams, Seq


def engine(tmp_path: Path) -> TorchEngine:
    return TorchEngine(parent_death_signal=None, token_dir=tmp_path / "ctl")


def test_launch_argv_env_and_urls(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    spec = WorkerSpec(engine="torch", port=9123, parallel=4, ctx=4096, dtype="bf16", threads=3)
    launch = eng.launch(spec, Path("/m/model.gguf"), None)
    token = tmp_path / "ctl" / "torch-control.token"
    assert launch.argv == [sys.executable, "-P", "-m", "agent.worker.torch_server", "--model", "/m/model.gguf",
                           "--host", "127.0.0.1", "--port", "9123", "--control-token-file", str(token),
                           "--dtype", "bf16", "--max-batch", "4", "--kv-budget-tokens", "4096", "--threads", "3"]
    assert launch.health_url == "http://127.0.0.1:9123/health"
    assert launch.metrics_url == "http://127.0.0.1:9123/metrics"
    assert launch.env["HF_HUB_OFFLINE"] == "1" and launch.engine == "torch"
    mode = token.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600 and stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert read_token(token) == token.read_text().strip() and len(read_token(token)) >= 32
    # the same token across restarts: the controller's client keeps working
    before = token.read_text()
    eng.launch(spec.model_copy(update={"dtype": "fp32"}), Path("/m/model.gguf"), None)
    assert token.read_text() == before
    assert eng.control_client(spec).base_url == "http://127.0.0.1:9123"


def test_gpu_placement_selects_cuda_and_that_device_only(tmp_path: Path) -> None:
    place = Placement(node=1, cpus=[4, 5], threads=2, membind=False, gpu=1, gpu_uuid="GPU-abc")
    launch = engine(tmp_path).launch(WorkerSpec(engine="torch"), Path("/m.gguf"), place)
    assert launch.argv[-4:] == ["--threads", "2", "--device", "cuda"]
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "GPU-abc"


def test_reserved_flags_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        engine(tmp_path).launch(WorkerSpec(engine="torch", extra_args=["--max-batch=3"]), Path("/m.gguf"), None)
    assert e.value.field == "worker.extra_args[0]"
    with pytest.raises(InputError) as e:
        engine(tmp_path).launch(WorkerSpec(engine="torch"), None, None)
    assert e.value.field == "worker.model"


def test_live_knobs_need_no_restart(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    old = WorkerSpec(engine="torch", parallel=2, ctx=1024)
    assert eng.restart_needed(old, old.model_copy(update={"parallel": 8, "ctx": 2048})) == []
    assert eng.live_update(old, old.model_copy(update={"parallel": 8, "ctx": 2048})) == {"max_batch": 8,
                                                                                          "kv_budget_tokens": 2048}
    assert eng.restart_needed(old, old.model_copy(update={"dtype": "bf16", "parallel": 3})) == ["dtype"]
    assert engine_for(old).name == "torch"


def test_token_file_rules(tmp_path: Path) -> None:
    p = tmp_path / "t"
    p.write_text("abc\n")
    p.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        read_token(p)
    p.chmod(0o600)
    assert read_token(p) == "abc"
    p.write_text("  \n")
    with pytest.raises(InputError, match="empty"):
        read_token(p)


def test_control_update_contract() -> None:
    assert ControlUpdate.model_validate({"kv_budget_tokens": None}).model_fields_set == {"kv_budget_tokens"}
    for bad in ({"max_batch": 0}, {"kv_budget_tokens": -5}, {"max_batch": 2, "colour": "red"}):
        with pytest.raises(ValidationError):
            ControlUpdate.model_validate(bad)


def test_parse_torch_metrics_keeps_only_torch_names() -> None:
    text = ("# TYPE torch:max_batch gauge\ntorch:max_batch 4\n# TYPE torch:kv_cache_tokens gauge\n"
            "torch:kv_cache_tokens 120\n# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n")
    assert parse_torch_metrics(text) == {"max_batch": 4.0, "kv_cache_tokens": 120.0}


def seq(pieces: dict[int, str], stop: tuple[str, ...] = (), max_tokens: int = 50) -> tuple[Seq, list[Event]]:
    events: list[Event] = []
    return Seq(prompt_ids=[1, 2], params=SamplingParams(max_tokens=max_tokens, stop=stop), sink=events.append,
               decode=lambda ids: "".join(pieces[i] for i in ids), eos_ids=frozenset({0})), events


def sent(events: list[Event]) -> str:
    return "".join(e.text for e in events if e.kind == "delta")


def test_stop_string_across_tokens_is_held_back_and_cut() -> None:
    s, ev = seq({1: "Hello", 2: " wor", 3: "ld", 4: " EN", 5: "D!", 6: "x"}, stop=("END",))
    assert not s.push(1) and not s.push(2) and not s.push(3)
    assert not s.push(4)
    assert sent(ev) == "Hello world "         # "EN" could start "END": held back
    assert s.push(5)
    assert sent(ev) == "Hello world " and s.finished == "stop"
    done = ev[-1]
    assert done.kind == "done" and done.completion_tokens == 5 and done.prompt_tokens == 2


def test_prefix_that_does_not_complete_a_stop_is_sent() -> None:
    s, ev = seq({1: "E", 2: "N", 3: "x"}, stop=("END",), max_tokens=3)
    s.push(1)
    s.push(2)
    assert sent(ev) == ""
    assert s.push(3) and s.finished == "length" and sent(ev) == "ENx"


def test_eos_and_incomplete_utf8() -> None:
    s, ev = seq({1: "caf", 2: "\ufffd", 3: "é"})
    s.push(1)

    def decode(ids: list[int]) -> str:   # a two-token character: the first token alone decodes to U+FFFD
        return "caf" + ("\ufffd" if ids[-1] == 2 else "é" if 2 in ids else "")

    s.decode = decode  # type: ignore[assignment]
    s.push(2)
    assert sent(ev) == "caf"
    s.push(3)
    assert sent(ev) == "café"
    assert s.push(0) and s.finished == "stop" and ev[-1].completion_tokens == 4


def test_non_streaming_sends_one_delta_and_decodes_once() -> None:
    calls: list[int] = []
    events: list[Event] = []

    def decode(ids: list[int]) -> str:
        calls.append(len(ids))
        return "".join(f"<{i}>" for i in ids)

    s = Seq(prompt_ids=[1], params=SamplingParams(max_tokens=10), sink=events.append, decode=decode,
            eos_ids=frozenset({0}), stream=False)
    assert not any(s.push(t) for t in (5, 6, 7))
    assert events == [] and calls == []
    assert s.push(0)                       # EOS: not part of the text
    assert [e.kind for e in events] == ["delta", "done"] and calls == [3]
    assert events[0].text == "<5><6><7>" and events[0].token_ids == (5, 6, 7, 0)
    assert events[1].completion_tokens == 4 and events[1].finish_reason == "stop"


def test_non_streaming_with_stop_string_cuts_the_text() -> None:
    events: list[Event] = []
    s = Seq(prompt_ids=[1], params=SamplingParams(max_tokens=10, stop=("ab",)), sink=events.append,
            decode=lambda ids: "".join({1: "x", 2: "a", 3: "b", 4: "y"}[i] for i in ids), eos_ids=frozenset(),
            stream=False)
    s.push(1)
    s.push(2)
    assert events == []
    assert s.push(3)
    assert [e.kind for e in events] == ["delta", "done"] and events[0].text == "x"
    assert events[0].token_ids == (1, 2, 3)
