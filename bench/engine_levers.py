"""Engine levers side by side: slot affinity (+ cache_prompt) on vs off on multi-turn traffic, and load shedding on
vs off under overload, against one real llama-server (bundled model), alternating A/B rounds.

    flock /tmp/hosttune-heavy.lock .venv/bin/python bench/engine_levers.py [--rounds 5] [--part multiturn,shed]

One llama-server (-t 2, -np 4, 4096 context tokens per slot, --cache-reuse 64, its default --cache-ram) and two
in-process gateways in front of it that differ only in the lever: A = off, B = on. Rounds alternate A, B, A, B...
so drift on a shared machine hits both alike.

multiturn: --sessions closed-loop conversations, each --turns turns; every turn sends an X-Session-Id header and
  resends the growing history (a distinct ~150-token system prompt per session, then the turns), --max-tokens
  output tokens (ignore_eos). Per round: TTFT p50/p95 (streamed, first content chunk), output tokens/s, and the
  engine's own prompt tokens processed vs reused (timings.prompt_n / cache_n of the last chunk).
shed: open-loop Poisson arrivals at --rate requests/s for --seconds (above this engine's capacity), short chats;
  TTFT SLO --slo-ms. Per round: goodput = requests that got their first token within the SLO per second of the
  arrival window (late answers keep the engine busy past it, for nothing), plus how many were answered and
  refused (503). B sheds above the SLO (slo.shed: true); A queues.
Report: mean and spread (min-max) over rounds of each figure, and B/A of the means.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.bench.llama_local import LocalLlamaServer, free_port
from agent.gateway.affinity import Shaping
from agent.gateway.app import Gateway
from agent.gateway.server import GatewayServer
from agent.gateway.settings import GatewaySettings
from agent.gateway.upstream import StaticUpstream
from agent.model_files import default_model_path

SLOTS = 4
TOPICS = ["cats", "rivers", "bridges", "volcanoes", "violins", "glaciers", "orchards", "lighthouses"]


@dataclass
class Reply:
    status: int
    ttft_s: float | None = None
    tokens: int = 0
    prompt_n: int | None = None
    cache_n: int | None = None


@dataclass
class Round:
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    prompt_n: int = 0
    cache_n: int = 0
    ok: int = 0
    refused: int = 0
    good: int = 0
    seconds: float = 0.0


def stream_chat(c: httpx.Client, url: str, body: dict[str, object], session: str | None) -> tuple[Reply, str]:
    headers = {"X-Session-Id": session} if session else {}
    t0 = time.monotonic()
    text: list[str] = []
    reply = Reply(status=0)
    with c.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, headers=headers) as r:
        reply.status = r.status_code
        if r.status_code != 200:
            r.read()
            return reply, ""
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if reply.ttft_s is None:
                        reply.ttft_s = time.monotonic() - t0
                    reply.tokens += 1
                    text.append(piece)
            timings = event.get("timings")
            if timings:
                reply.prompt_n, reply.cache_n = timings.get("prompt_n"), timings.get("cache_n")
    return reply, "".join(text)


def multiturn_round(url: str, sessions: int, turns: int, max_tokens: int, seed: int) -> Round:
    out = Round()
    lock = threading.Lock()

    def session(i: int) -> None:
        rnd = random.Random(seed * 1000 + i)
        topic = TOPICS[i % len(TOPICS)]
        system = f"Session {seed}-{i}. You are an expert on {topic}. " + " ".join(
            rnd.choice(["Answer", "briefly", "and", "kindly", "with", "facts", "about", topic]) for _ in range(110))
        history: list[dict[str, str]] = [{"role": "system", "content": system}]
        with httpx.Client(timeout=300) as c:
            for t in range(turns):
                history.append({"role": "user", "content": f"Question {t} about {topic}: {rnd.random():.6f}?"})
                body = {"messages": history, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
                reply, text = stream_chat(c, url, body, f"s{seed}-{i}")
                history.append({"role": "assistant", "content": text})
                with lock:
                    if reply.status == 200 and reply.ttft_s is not None:
                        out.ok += 1
                        out.ttft.append(reply.ttft_s)
                        out.tokens += reply.tokens
                        out.prompt_n += reply.prompt_n or 0
                        out.cache_n += reply.cache_n or 0

    t0 = time.monotonic()
    threads = [threading.Thread(target=session, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.seconds = time.monotonic() - t0
    return out


def shed_round(url: str, rate: float, seconds: float, slo_s: float, max_tokens: int, seed: int) -> Round:
    out = Round()
    lock = threading.Lock()
    rnd = random.Random(seed)

    def one(i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"Request {seed}-{i}: name a colour."}],
                "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
        with httpx.Client(timeout=300) as c:
            reply, _ = stream_chat(c, url, body, None)
        with lock:
            if reply.status == 503:
                out.refused += 1
            elif reply.status == 200 and reply.ttft_s is not None:
                out.ok += 1
                out.ttft.append(reply.ttft_s)
                out.tokens += reply.tokens
                out.good += reply.ttft_s <= slo_s

    t0 = time.monotonic()
    threads: list[threading.Thread] = []
    at, i = 0.0, 0
    while at < seconds:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        th = threading.Thread(target=one, args=(i,))
        th.start()
        threads.append(th)
        at += rnd.expovariate(rate)
        i += 1
    for th in threads:
        th.join()
    out.seconds = time.monotonic() - t0
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def summary(name: str, rounds: dict[str, list[dict[str, float]]]) -> dict[str, object]:
    print(f"\n{name}: mean [min-max] over {len(rounds['A'])} rounds each")
    keys = list(rounds["A"][0])
    table: dict[str, object] = {}
    for k in keys:
        a = [r[k] for r in rounds["A"]]
        b = [r[k] for r in rounds["B"]]
        ma, mb = statistics.fmean(a), statistics.fmean(b)
        ratio = mb / ma if ma else float("nan")
        table[k] = {"A": a, "B": b, "ratio": ratio}
        print(f"  {k:16s} A {ma:9.3f} [{min(a):.3f}-{max(a):.3f}]   B {mb:9.3f} [{min(b):.3f}-{max(b):.3f}]"
              f"   B/A {ratio:.3f}")
    return table


def serve(server: LocalLlamaServer, settings: GatewaySettings, shaping: Shaping,
          budget_s: float | None) -> GatewayServer:
    gw = Gateway(StaticUpstream(server.url), settings)
    gw.configure_worker(shaping, budget_s)
    return GatewayServer(gw.app(), port=free_port()).start()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="multiturn,shed")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--rate", type=float, default=4.0, help="shed: arrivals per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="shed: length of the arrivals in a round")
    ap.add_argument("--slo-ms", type=float, default=2000.0)
    ap.add_argument("--order", choices=["AB", "BA"], default="AB", help="which side runs first in each pair")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    parts = set(args.part.split(","))
    server = LocalLlamaServer(default_model_path(), threads=2,
                              extra_args=["-np", str(SLOTS), "-c", str(SLOTS * 4096), "--cache-reuse", "64"])
    server.start(timeout_s=180)
    results: dict[str, object] = {}
    try:
        if "multiturn" in parts:
            limit = GatewaySettings(limit=SLOTS)
            a = serve(server, limit, Shaping(slots=SLOTS), None)
            b = serve(server, limit, Shaping(slots=SLOTS, affinity=True, cache_prompt=True), None)
            rounds: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
            for r in range(args.rounds):
                for side, gw in sorted((("A", a), ("B", b)), reverse=args.order == "BA"):
                    m = multiturn_round(gw.url, args.sessions, args.turns, args.max_tokens, seed=r)
                    rounds[side].append({"ttft_p50_ms": pct(m.ttft, 0.5) * 1000, "ttft_p95_ms": pct(m.ttft, 0.95)
                                         * 1000, "tok_per_s": m.tokens / m.seconds, "prompt_n": m.prompt_n,
                                         "cache_n": m.cache_n, "ok": m.ok})
                    print(f"multiturn round {r} {side}: {rounds[side][-1]}", flush=True)
            a.stop()
            b.stop()
            results["multiturn"] = summary("multiturn (A: affinity off, B: slot affinity + cache_prompt)", rounds)
        if "shed" in parts:
            limit = GatewaySettings(limit=SLOTS, max_queue=1024, queue_timeout_s=120)
            a = serve(server, limit, Shaping(slots=SLOTS), None)
            b = serve(server, limit, Shaping(slots=SLOTS), args.slo_ms / 1000)
            rounds = {"A": [], "B": []}
            slo_s = args.slo_ms / 1000
            for r in range(args.rounds):
                for side, gw in sorted((("A", a), ("B", b)), reverse=args.order == "BA"):
                    m = shed_round(gw.url, args.rate, args.seconds, slo_s, args.max_tokens, seed=r)
                    rounds[side].append({"goodput_rps": m.good / args.seconds, "round_s": m.seconds, "ok": m.ok,
                                         "good": m.good, "refused": m.refused, "ttft_p50_ms": pct(m.ttft, 0.5) * 1000,
                                         "ttft_p95_ms": pct(m.ttft, 0.95) * 1000,
                                         "tok_per_s": m.tokens / m.seconds})
                    print(f"shed round {r} {side}: {rounds[side][-1]}", flush=True)
            a.stop()
            b.stop()
            results["shed"] = summary(f"overload {args.rate:g}/s for {args.seconds:g} s, SLO {args.slo_ms:g} ms "
                                      "(A: queue, B: shed)", rounds)
    finally:
        server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
