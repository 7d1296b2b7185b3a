"""Engine levers from the policy: llama-server's prompt-cache flags, a quantized V cache with flash attention,
threads_batch as a controller ladder axis bounded by the worker's CPUs, and the bounds hostile values meet."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.control.config import config_for, threads_batch_axis
from agent.control.ladder import candidates
from agent.control.wiring import worker_overrides
from agent.errors import InputError
from agent.policy.model import SloSpec, WorkerSpec
from agent.worker.engines import LlamaCppEngine
from agent.worker.llamacpp_bin import LlamaServerBinary
from agent.worker.placement import Placement

BINARY = LlamaServerBinary(path=Path("/opt/llama/bin/llama-server"), lib_dir=Path("/opt/llama/lib"))
MODEL = Path("/models/m.gguf")


def argv(**fields: object) -> list[str]:
    return LlamaCppEngine(BINARY).argv(WorkerSpec.model_validate(fields), MODEL, None)


def value_of(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def test_prompt_cache_flags_reach_argv() -> None:
    args = argv(cache_reuse=256, cache_ram_mib=2048)
    assert value_of(args, "--cache-reuse") == "256" and value_of(args, "--cache-ram") == "2048"
    assert value_of(argv(cache_ram_mib=-1), "--cache-ram") == "-1"
    plain = argv()
    assert "--cache-reuse" not in plain and "--cache-ram" not in plain
    # the gateway's switches are not llama-server flags
    assert argv(cache_prompt=True, slot_affinity=True) == plain


def test_quantized_v_cache_turns_flash_attention_on() -> None:
    args = argv(cache_type_k="q8_0", cache_type_v="q8_0")
    assert value_of(args, "-ctv") == "q8_0" and value_of(args, "-fa") == "on"
    assert value_of(argv(cache_type_k="q8_0"), "-fa") is None  # a quantized K alone needs no flash attention
    assert value_of(argv(cache_type_v="f16"), "-fa") is None
    assert value_of(argv(cache_type_v="bf16", flash_attn=False), "-fa") == "off"
    with pytest.raises(InputError) as e:
        argv(cache_type_v="q8_0", flash_attn=False)
    assert e.value.field == "worker.flash_attn"


@pytest.mark.parametrize("flag", ["--cache-reuse", "-cram", "--cache-ram=0", "-fa", "-ctv", "--cache-type-k"])
def test_flags_the_spec_owns_are_refused_in_extra_args(flag: str) -> None:
    with pytest.raises(InputError) as e:
        argv(extra_args=[flag, "1"])
    assert e.value.field == "worker.extra_args[0]"


@pytest.mark.parametrize(("field", "bad"), [
    ("cache_reuse", -1), ("cache_reuse", 1 << 40), ("cache_ram_mib", -2), ("cache_ram_mib", 1 << 40),
    ("threads", 0), ("threads", 1 << 20), ("threads_batch", 1 << 20), ("threads_batch_max", 0),
    ("cache_prompt", "yes please"), ("slot_affinity", [1]),
])
def test_hostile_worker_values_are_refused_naming_the_field(field: str, bad: object) -> None:
    with pytest.raises(ValidationError) as e:
        WorkerSpec.model_validate({field: bad})
    assert e.value.errors()[0]["loc"] == (field,)


def test_shed_needs_a_ttft_slo() -> None:
    assert SloSpec(ttft_p95_ms=2000, shed=True).shed
    with pytest.raises(ValidationError, match="shed needs ttft_p95_ms"):
        SloSpec(shed=True)


def test_threads_batch_axis_runs_from_threads_to_the_cpus() -> None:
    axis = threads_batch_axis(threads=2, cpus=16, most=64)
    assert axis is not None and axis.values == [2, 4, 8, 16]
    axis = threads_batch_axis(threads=3, cpus=16, most=6)
    assert axis is not None and axis.values == [3, 4, 6]
    assert threads_batch_axis(threads=2, cpus=2, most=8) is None  # no CPU to spare: no axis
    assert threads_batch_axis(threads=8, cpus=16, most=4) is None


def test_worker_overrides_add_the_axis_only_when_the_policy_allows() -> None:
    placement = Placement(node=0, cpus=list(range(8)), threads=4, membind=False, reasons=[])
    assert worker_overrides(WorkerSpec(), placement) == {}
    assert worker_overrides(WorkerSpec(engine="torch", threads_batch_max=8), placement) == {}
    over = worker_overrides(WorkerSpec(threads_batch_max=32), placement)
    cfg = config_for("llamacpp", SloSpec(ttft_p95_ms=1000), **over)
    assert [a.knob for a in cfg.ladder][-1] == "threads_batch"
    assert cfg.ladder[-1].values == [4, 8]  # bounded by the placement's 8 CPUs, not the policy's 32
    # from the unset value (= threads) the only step is up: prefill threads apart from decode threads
    knobs = {"parallel": 4, "ubatch": 512, "threads_batch": None}
    steps = [k for k in candidates(knobs, cfg) if k["threads_batch"] is not None]
    assert steps == [{**knobs, "threads_batch": 8}]
