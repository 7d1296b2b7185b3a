"""Engine levers against the real llama-server with the bundled model: the argv hosttune builds for a quantized
KV cache (q8_0 K and V, flash attention turned on for it) and --cache-reuse starts the engine, and two turns of
one conversation through the gateway's slot affinity land on one slot whose cached prefix the second turn reuses
(the engine's own timings: prompt_n processed, cache_n reused)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from agent.bench.llama_local import LocalLlamaServer
from agent.gateway.affinity import conversation_key
from agent.gateway.app import create_app
from agent.gateway.levers import levers_for
from agent.gateway.settings import GatewaySettings
from agent.gateway.upstream import ProbedUpstream
from agent.policy.model import WorkerSpec
from agent.worker.engines import LlamaCppEngine
from tests.support.gateway_fakes import ServedApp

pytestmark = [pytest.mark.engine, pytest.mark.slow]
SPEC = WorkerSpec(parallel=2, ctx=4096, cache_type_k="q8_0", cache_type_v="q8_0", cache_reuse=64,
                  cache_prompt=True, slot_affinity=True)
SYSTEM = "You are a patient assistant who answers questions about animals in a few words. " * 6


@pytest.fixture
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLlamaServer]:
    from agent.model_files import default_model_path

    model = default_model_path()
    args = LlamaCppEngine().argv(SPEC, model, None)
    assert args[args.index("-fa") + 1] == "on"  # a q8_0 V cache needs flash attention
    knobs = args[args.index("--metrics") + 1:]  # the server adds model, host, port, --metrics and -t itself
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    server = LocalLlamaServer(model, threads=2, extra_args=knobs, log_path=log)
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


def test_a_conversation_stays_on_its_slot_and_reuses_its_prefix(llama: LocalLlamaServer) -> None:
    endpoint = ProbedUpstream(llama.url, healthy_every_s=0.5, unhealthy_every_s=0.1)
    app, gw = create_app(endpoint, GatewaySettings())
    gw.configure_worker(*levers_for(SPEC, None))
    history = {sid: [{"role": "system", "content": f"[{sid}] {SYSTEM}"}] for sid in ("cats", "dogs")}
    timings: dict[str, list[dict[str, int]]] = {"cats": [], "dogs": []}
    with ServedApp(app) as served, httpx.Client(timeout=120) as c:
        deadline = time.monotonic() + 30
        while not endpoint.is_ready():
            assert time.monotonic() < deadline, "gateway never saw the worker ready"
            time.sleep(0.05)
        for question in ("What do they eat?", "How long do they sleep?"):
            for sid in ("cats", "dogs"):  # interleaved: each turn's slot was used by the other conversation last
                history[sid].append({"role": "user", "content": f"{sid}: {question}"})
                r = c.post(served.url + "/v1/chat/completions", headers={"X-Session-Id": sid},
                           json={"messages": history[sid], "max_tokens": 12, "ignore_eos": True})
                assert r.status_code == 200, r.text
                reply = r.json()
                history[sid].append(reply["choices"][0]["message"])
                timings[sid].append({**reply["timings"], "prompt_tokens": reply["usage"]["prompt_tokens"]})
        slots = {sid: gw.levers.slot_map.slot_of(conversation_key(sid, {}) or b"") for sid in ("cats", "dogs")}
    assert None not in slots.values() and slots["cats"] != slots["dogs"]  # two conversations, two slots
    for sid in ("cats", "dogs"):
        first, second = timings[sid]
        assert first["cache_n"] == 0 and first["prompt_n"] == first["prompt_tokens"]
        # the second turn resends the whole history; the engine processes only what its slot did not hold
        assert second["cache_n"] >= first["prompt_tokens"]
        assert second["prompt_n"] < second["prompt_tokens"] / 4
