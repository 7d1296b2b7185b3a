"""Torch worker decode throughput at batch 1, 4 and 16, next to transformers' own generate() at the same batch, in
one run on the same machine (so both see the same load from anything else running).

    .venv/bin/python bench/torch_batch.py [--model default] [--batches 1,4,16] [--new-tokens 32] [--rounds 3]
                                          [--threads N] [--device auto] [--dtype auto] [--json OUT]

Worker: one `python -m agent.worker.torch_server` process; for each batch size B the live max batch is set to B
over /control and B clients send one completion each of exactly new-tokens tokens (ignore_eos) at once;
tokens/s = completion tokens / wall time of the round. Prefill is included (short prompts), as a client sees it.
generate(): the same prompts, left-padded to a batch of B, greedy, exactly new-tokens tokens, in this process.
Worker and generate() rounds alternate (`rounds` of each per batch size, best kept), so load from anything else
running on the machine hits both alike.

With --controller-slo-ms MS the same worker then goes behind the gateway with the adaptive controller driving its
live levers (torch ladder: max_batch 1, 2, 4, ... 64; fast lever on the admission limit) under a p95 TTFT SLO of
MS, starting from max_batch 1, while --clients closed-loop clients send the same completions through the gateway
for up to --controller-s seconds (until every step from its setting was tried). Its converged max_batch is then
measured exactly like the fixed batches (B clients at once, best of `rounds`), next to them in the table, with
the closed-loop tokens/s and p95 TTFT of its last measurement window.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.bench.llama_local import free_port
from agent.model_files import resolve_model
from agent.worker.torch_control import TorchWorkerControl

PROMPTS = ["Once upon a time", "The three primary colors are", "In 1492, Columbus", "My favorite food is",
           "The quick brown fox", "List three fruits:", "A haiku about rain:", "Why is the sky blue?"]


class WorkerUnderTest:
    """One worker process with its control token; completions sent by a thread pool."""

    def __init__(self, model: Path, args: argparse.Namespace) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="torch-bench-"))
        token = self.tmp / "token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, secrets.token_hex(16).encode())
        os.close(fd)
        port = free_port()
        argv = [sys.executable, "-m", "agent.worker.torch_server", "--model", str(model), "--port", str(port),
                "--control-token-file", str(token), "--device", args.device, "--dtype", args.dtype,
                "--log-level", "warning"]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        self.log = open(self.tmp / "worker.log", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(timeout=600, trust_env=False)
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited: {(self.tmp / 'worker.log').read_text()[-2000:]}")
            try:
                if self.client.get(self.url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("worker not ready in 600 s")
            time.sleep(0.2)
        self.control = TorchWorkerControl(self.url, token_file=token)

    def one(self, prompt: str, new_tokens: int) -> int:
        r = self.client.post(self.url + "/v1/completions", json={"prompt": prompt, "max_tokens": new_tokens,
                                                                  "ignore_eos": True})
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    def round(self, b: int, new_tokens: int) -> float:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(b) as pool:
            tokens = sum(pool.map(lambda p: self.one(p, new_tokens), prompts))
        return tokens / (time.perf_counter() - t0)

    def close(self) -> None:
        self.control.close()
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class GenerateUnderTest:
    """The same model loaded in this process, run with transformers' generate() on left-padded batches."""

    def __init__(self, model: Path, args: argparse.Namespace) -> None:
        import torch

        from agent.worker.torch_server.loader import load_model, pick_device, pick_dtype

        self.torch = torch
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = pick_device(args.device)
        self.loaded = load_model(model, self.device, pick_dtype(args.dtype, self.device))
        self.tok = self.loaded.tokenizer
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token

    def round(self, b: int, new_tokens: int) -> float:
        torch = self.torch
        enc = self.tok([PROMPTS[i % len(PROMPTS)] for i in range(b)], return_tensors="pt",
                       padding=True).to(self.device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.loaded.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                             do_sample=False, pad_token_id=self.tok.pad_token_id)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        return (out.shape[1] - enc["input_ids"].shape[1]) * b / (time.perf_counter() - t0)


def measure(model: Path, batches: list[int], new_tokens: int, rounds: int, args: argparse.Namespace
            ) -> list[dict[str, Any]]:
    """Both engines loaded side by side (the idle one costs nothing); at each batch size their rounds alternate,
    so a change in load from other processes hits both alike. Best round per engine and batch."""
    worker = WorkerUnderTest(model, args)
    try:
        gen = GenerateUnderTest(model, args)
        state = worker.control.state()
        worker.round(1, 4)
        gen.round(1, 4)  # warm-up
        points: list[dict[str, Any]] = []
        for b in batches:
            worker.control.set_max_batch(b)
            m0 = worker.control.stats()
            best_w = best_g = 0.0
            for _ in range(rounds):
                best_w = max(best_w, worker.round(b, new_tokens))
                best_g = max(best_g, gen.round(b, new_tokens))
            m1 = worker.control.stats()
            occupancy = (m1["decode_rows_total"] - m0["decode_rows_total"]) / max(1.0, m1["n_decode_total"] -
                                                                                   m0["n_decode_total"])
            points.append({"engine": "torch worker", "batch": b, "tokens_per_s": round(best_w, 1),
                           "mean_rows_per_step": round(occupancy, 2), "device": state.device, "dtype": state.dtype})
            points.append({"engine": "generate()", "batch": b, "tokens_per_s": round(best_g, 1),
                           "device": str(gen.device), "dtype": gen.loaded.dtype_name})
            print(f"batch {b:>3}: worker {best_w:7.1f} tok/s (rows per step {occupancy:.2f}), generate() "
                  f"{best_g:7.1f} tok/s", file=sys.stderr)
        if args.controller_slo_ms:
            chosen = controller_choice(worker, args)
            b = chosen["max_batch"]
            # side by side: the controller's choice and the fixed batches again, rounds alternating, worker only
            again: dict[int, float] = {}
            for _ in range(rounds):
                for x in [*batches, b]:
                    worker.control.set_max_batch(x)
                    again[x] = max(again.get(x, 0.0), worker.round(x, new_tokens))
            points.append({"engine": "torch worker, controller's choice", "batch": b,
                           "tokens_per_s": round(again[b], 1), "controller": chosen,
                           "side_by_side": {str(k): round(v, 1) for k, v in again.items()}})
            print(f"controller chose max_batch {b}: {again[b]:.1f} tok/s; fixed again: "
                  + ", ".join(f"{k}: {v:.1f}" for k, v in again.items()), file=sys.stderr)
        return points
    finally:
        worker.close()


def controller_choice(worker: WorkerUnderTest, args: argparse.Namespace) -> dict[str, Any]:
    """Run the controller on the live worker behind the gateway until it converges; what it chose, and what its
    last measured window saw."""
    from agent.bench.corpus import MixSpec
    from agent.bench.rig import ClosedLoopLoad, serve_gateway
    from agent.control.actuators import GateActuator, LiveActuator
    from agent.control.config import config_for
    from agent.control.controller import Controller
    from agent.control.feed import GatewayFeed
    from agent.control.observe import measure as window
    from agent.gateway.upstream import ProbedUpstream
    from agent.policy.model import SloSpec

    worker.control.set_max_batch(1)
    cfg = config_for("torch", SloSpec(ttft_p95_ms=args.controller_slo_ms), interval_s=1)
    endpoint = ProbedUpstream(worker.url, healthy_every_s=1.0)
    t0 = time.monotonic()
    with serve_gateway(endpoint, limit=args.clients, max_queue=1024, queue_timeout_s=600) as (gw, url):
        while not endpoint.is_ready():
            time.sleep(0.1)
        ctl = Controller(cfg, GatewayFeed(gw.stats, watch_gpu=False), GateActuator(gw.gate),
                         LiveActuator(worker.control))
        mix = MixSpec({"chat": 1.0}, max_tokens=args.new_tokens)
        with ClosedLoopLoad(url, args.clients, mix, timeout_s=600) as load:
            last_note = ""
            while time.monotonic() - t0 < args.controller_s and ctl.core.converged_tps is None:
                time.sleep(1)
                ctl.tick()
                st = ctl.status()
                note = f"limit {st['limit']}, max_batch {st['knobs'].get('max_batch')}: {st['slow_lever']}"
                if note != last_note:  # progress: what the controller waits for, as it changes
                    print(f"  controller +{time.monotonic() - t0:5.0f} s  {note}", file=sys.stderr)
                    last_note = note
            ticks = list(ctl.core.ticks)
        results = load.results
    elapsed = time.monotonic() - t0
    steps = [d for d in ctl.decisions() if d.lever == "knobs"]
    for d in steps:
        print(f"controller: {d.before} -> {d.after}: {d.outcome} ({d.outcome_reason})", file=sys.stderr)
    last = window(ticks, ticks[-1].t - cfg.measure_s, ticks[-1].t) if ticks else None
    return {"slo_ttft_p95_ms": args.controller_slo_ms, "max_batch": worker.control.state().max_batch,
            "limit": gw.gate.limit, "converged": ctl.core.converged_tps is not None, "seconds": round(elapsed, 1),
            "steps": [{"after": d.after, "outcome": d.outcome} for d in steps],
            "failed_requests": sum(1 for r in results if not r.ok), "requests": len(results),
            "closed_loop_tokens_per_s": round(last.tokens_per_s, 1) if last and last.tokens_per_s else None,
            "closed_loop_ttft_p95_ms": round(last.service_ttft_p95_s * 1000) if last and last.service_ttft_p95_s
            else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--controller-slo-ms", type=float, default=None,
                   help="also run the controller on the worker under this p95 TTFT SLO and measure its choice")
    p.add_argument("--controller-s", type=float, default=300, help="longest controller run (default 300 s)")
    p.add_argument("--clients", type=int, default=16, help="closed-loop clients during the controller run")
    args = p.parse_args()
    model = resolve_model(args.model)
    batches = [int(x) for x in args.batches.split(",") if x.strip()]
    t0 = time.time()
    points = measure(model, batches, args.new_tokens, args.rounds, args)
    load = os.getloadavg()
    result = {"model": model.name, "new_tokens": args.new_tokens, "rounds": args.rounds, "cpus": os.cpu_count(),
              "loadavg_1m_at_end": round(load[0], 2), "seconds": round(time.time() - t0, 1), "points": points}
    print("| batch | torch worker tok/s | generate() tok/s | worker / generate | worker rows per step |")
    print("|---:|---:|---:|---:|---:|")
    for b in batches:
        w = next(x for x in points if x["engine"] == "torch worker" and x["batch"] == b)
        g = next(x for x in points if x["engine"] == "generate()" and x["batch"] == b)
        print(f"| {b} | {w['tokens_per_s']} | {g['tokens_per_s']} | {w['tokens_per_s'] / g['tokens_per_s']:.2f} | "
              f"{w['mean_rows_per_step']} |")
    chosen = next((x for x in points if "controller" in x), None)
    if chosen is not None:
        c = chosen["controller"]
        print(f"\ncontroller (p95 TTFT SLO {c['slo_ttft_p95_ms']:g} ms, {args.clients} closed-loop clients): "
              f"max_batch {chosen['batch']} in {c['seconds']} s ({len(c['steps'])} steps, "
              f"{c['failed_requests']} of {c['requests']} requests failed); its last window: "
              f"{c['closed_loop_tokens_per_s']} tok/s, p95 TTFT {c['closed_loop_ttft_p95_ms']} ms")
        print("| batch | tok/s, side by side |\n|---:|---:|")
        for k, v in chosen["side_by_side"].items():
            mark = " (controller's choice)" if int(k) == chosen["batch"] else ""
            print(f"| {k}{mark} | {v} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
