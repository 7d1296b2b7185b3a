"""The torch worker for real: `hosttune worker run` with `engine: torch` on the bundled SmolLM2-135M (CPU, fp32),
one worker for the whole module (loading takes ~20 s). Outputs at batch 1 equal transformers' greedy generate();
the live levers (max batch, KV budget) change under load without a failed request; an injected out-of-memory
halves the batch and every request still completes, in the same worker process."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.bench.llama_local import free_port
from agent.gateway.sse import SSEParser, has_content, reported_tokens
from agent.model_files import default_model_path
from agent.worker.torch_control import TorchWorkerControl
from tests.e2e.worker_run import WorkerRun
from tests.support import tiers

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
LOAD_PROMPTS = ["Once upon a time", "The three primary colors are", "In 1492, Columbus", "My favorite food is",
                "The quick brown fox", "List three fruits:", "A haiku about rain:", "Why is the sky blue?"]


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        if tiers.on_ci():
            pytest.fail(f"the torch extra must be installed on CI: {e}", pytrace=False)
        pytest.skip(f"torch extra not installed ({e}); run `make setup`")


class Worker:
    def __init__(self, run: WorkerRun, state: dict[str, Any]) -> None:
        self.run = run
        self.url = str(state["base_url"])
        self.pid = int(state["pid"])
        argv = list(state["argv"])
        token_file = Path(argv[argv.index("--control-token-file") + 1])
        self.control = TorchWorkerControl(self.url, token_file=token_file, timeout_s=30)
        self.http = httpx.Client(timeout=600, trust_env=False)

    def complete(self, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
        r = self.http.post(self.url + "/v1/completions",
                           json={"prompt": prompt, "max_tokens": max_tokens, "return_tokens": True, **extra})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def metrics(self) -> dict[str, float]:
        return self.control.stats()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    _require_torch()
    tmp = tmp_path_factory.mktemp("torch-worker")
    run = WorkerRun(tmp, {"engine": "torch", "model": "default", "port": free_port(), "parallel": 1,
                          "dtype": "fp32"}, "--backoff", "0.5")
    try:
        st = run.wait(lambda s: s.get("state") == "ready", 300, "the torch worker to become ready")
        w = Worker(run, st)
        yield w
        w.control.close()
        w.http.close()
        assert run.state().get("pid") == st["pid"] and run.state().get("restarts", 0) == 0, "the worker restarted"
    finally:
        rc = run.stop()
    assert rc == 0, run.output()


@pytest.fixture(autouse=True)
def levers_reset(worker: Worker) -> Iterator[None]:
    worker.control.update(max_batch=1, kv_budget_tokens=None)
    yield
    worker.control.update(max_batch=1, kv_budget_tokens=None)


def test_batch_one_equals_greedy_generate(worker: Worker) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True,
                                                 dtype=torch.float32).eval()
    n = 12
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
        expected = out[0, enc["input_ids"].shape[1]:].tolist()
        body = worker.complete(prompt, n)
        got = body["choices"][0]["tokens"]
        assert got == expected[:len(got)] and (len(got) == n or got[-1] == tok.eos_token_id), (prompt, got,
                                                                                             expected)
        assert body["usage"] == {"prompt_tokens": enc["input_ids"].shape[1], "completion_tokens": len(got),
                                 "total_tokens": enc["input_ids"].shape[1] + len(got)}
        assert body["choices"][0]["text"] == tok.decode(got, skip_special_tokens=True)


def _load(worker: Worker, prompts: list[str], max_tokens: int) -> list[cf.Future[dict[str, Any]]]:
    pool = cf.ThreadPoolExecutor(len(prompts))
    futs = [pool.submit(worker.complete, p, max_tokens, ignore_eos=True) for p in prompts]
    pool.shutdown(wait=False)
    return futs


def _wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _all_complete(futs: list[cf.Future[dict[str, Any]]], max_tokens: int) -> None:
    for f in futs:
        body = f.result(timeout=600)
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == max_tokens


def test_max_batch_one_to_eight_under_load(worker: Worker) -> None:
    m0 = worker.metrics()
    futs = _load(worker, LOAD_PROMPTS, 16)
    _wait_for(lambda: (m := worker.metrics())["requests_deferred"] >= 4 and m["requests_processing"] == 1, 120,
              "requests queued behind max batch 1")
    m1 = worker.metrics()
    # at max batch 1 every decode step carried exactly one sequence
    assert m1["decode_rows_total"] - m0["decode_rows_total"] == m1["n_decode_total"] - m0["n_decode_total"]
    assert m1["batch_size"] == 1 and m1["requests_processing"] == 1
    state = worker.control.set_max_batch(8)
    assert state.max_batch == 8
    seen = [0.0]

    def watch() -> None:
        while not all(f.done() for f in futs):
            seen[0] = max(seen[0], worker.metrics()["batch_size"])
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    _all_complete(futs, 16)
    t.join()
    m2 = worker.metrics()
    steps, rows = m2["n_decode_total"] - m1["n_decode_total"], m2["decode_rows_total"] - m1["decode_rows_total"]
    assert seen[0] >= 4 and rows / steps > 1.5, (seen, rows, steps)
    assert m2["requests_failed_total"] == m0["requests_failed_total"]
    assert m2["requests_finished_total"] - m0["requests_finished_total"] == len(LOAD_PROMPTS)


def test_kv_budget_smaller_than_load_queues(worker: Worker) -> None:
    max_tokens = 12
    prompt_tokens = [worker.complete(p, 1)["usage"]["prompt_tokens"] for p in LOAD_PROMPTS[:6]]
    budget = max(prompt_tokens) * 2 + 2 * max_tokens   # room for two of them at a time
    worker.control.update(max_batch=8, kv_budget_tokens=budget)
    futs = _load(worker, LOAD_PROMPTS[:6], max_tokens)
    peak_running = peak_reserved = peak_queued = 0
    while not all(f.done() for f in futs):
        st = worker.control.state()
        peak_running, peak_queued = max(peak_running, st.running), max(peak_queued, st.queued)
        peak_reserved = max(peak_reserved, st.kv_tokens_reserved)
        time.sleep(0.05)
    _all_complete(futs, max_tokens)
    assert peak_reserved <= budget and 1 <= peak_running <= 2 and peak_queued >= 3, (peak_running, peak_queued)
    m = worker.metrics()
    assert m["kv_cache_budget_tokens"] == budget


def test_injected_oom_halves_batch_and_all_complete(worker: Worker) -> None:
    before = worker.control.state()
    worker.control.set_max_batch(8)
    futs = _load(worker, LOAD_PROMPTS[:6], 16)
    _wait_for(lambda: worker.control.state().running >= 4, 120, "four running sequences")
    worker.control.inject_oom(1)
    _all_complete(futs, 16)
    st = worker.control.state()
    assert st.oom_total == before.oom_total + 1
    ev = st.last_ooms[-1]
    assert ev.injected and ev.phase == "decode" and ev.rows >= 4 and ev.failed == 0 and ev.requeued == ev.rows
    assert ev.max_batch_before == 8 and ev.max_batch_after == ev.rows // 2 and st.max_batch == ev.max_batch_after
    m = worker.metrics()
    assert m["oom_total"] == st.oom_total and m["max_batch"] == st.max_batch
    assert worker.run.state()["pid"] == worker.pid          # handled inside the worker: no crash, no restart
    assert "out of memory during decode" in (worker.run.state_dir / "worker" / "stderr.log").read_text()


def test_streaming_chat_as_the_gateway_counts_it(worker: Worker) -> None:
    body = {"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 8, "stream": True}
    parser, chunks, usage = SSEParser(), [], None
    with worker.http.stream("POST", worker.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [data for chunk in r.iter_bytes() for _, data in parser.feed(chunk)]
    assert events[-1] == b"[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert objs[0]["choices"][0]["delta"]["role"] == "assistant"
    chunks = [o for o in objs if has_content(o)]
    usage = reported_tokens(objs[-1])
    assert usage[2] == "usage" and usage[1] is not None and 1 <= len(chunks) <= usage[1] <= 8
    assert objs[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_control_needs_the_token_and_bad_input_is_400(worker: Worker) -> None:
    r = worker.http.post(worker.url + "/control", json={"max_batch": 64})
    assert r.status_code == 401
    r = worker.http.post(worker.url + "/control", json={"max_batch": 4},
                         headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and worker.control.state().max_batch == 1
    r = worker.http.post(worker.url + "/v1/completions", json={"prompt": "x", "max_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = worker.http.post(worker.url + "/v1/completions", json={"prompt": "x " * 9000, "max_tokens": 4})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    r = worker.http.get(worker.url + "/v1/models")
    assert r.json()["data"][0]["id"] == default_model_path().stem
    assert os.path.exists(f"/proc/{worker.pid}")
