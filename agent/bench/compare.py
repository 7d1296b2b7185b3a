"""`hosttune bench --compare`: one load, alternating rounds on two arms, and the B/A ratio with its interval.

Arm A is the untouched host running the engine at its own defaults; arm B is hosttune's policy with its controller
converged (agent/bench/compare_arms.py builds both). The loop here knows neither: it converges B once, then runs
`rounds` pairs A, B, A, B, ... `precheck` (the host as the compare found it, no open journal transaction) must
pass at the start, before every A round and after the last B round. Any failure stops both arms, calls `restore`
and re-raises: a compare never leaves the host tuned nor a server running.

Each round's load is one call of a `RoundLoad` (url -> LevelRun): the same seeded requests in every round, on both
arms, so rounds differ by the server and the host only.
The report holds every round's figures, goodput at the SLO (agent/bench/goodput.py) and the B/A ratios of goodput
and tokens/s with percentile-bootstrap intervals over rounds (agent/bench/stats.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from agent.bench.goodput import goodput
from agent.bench.load import LevelRun
from agent.bench.report import summarize_level
from agent.bench.stats import MIN_ROUNDS, bootstrap_ratio
from agent.errors import InputError

RoundLoad = Callable[[str], LevelRun]   # url -> one round's requests (the same seeded requests every round)
ARMS = ("A", "B")
RATIO_FIGURES = (("goodput_requests_per_s", "goodput req/s"), ("goodput_tokens_per_s", "goodput tok/s"),
                 ("tokens_per_s", "tokens/s"))


class Arm(Protocol):
    def start(self) -> str:
        """Start the server(s) and return the URL the load goes to, once ready."""
        ...

    def after_round(self) -> dict[str, Any]:
        """What the arm wants recorded about the round just measured (read before stop)."""
        ...

    def stop(self) -> None:
        """Stop what start() started (idempotent)."""
        ...

    def describe(self) -> dict[str, Any]:
        ...


class ConvergingArm(Arm, Protocol):
    def converge(self, load: RoundLoad, timeout_s: float) -> dict[str, Any]:
        """Start, drive `load` until the controller converges or `timeout_s` passes, remember what it settled on
        (later start() calls serve with it), stop. Returns what was converged on (or that it timed out)."""
        ...


@dataclass(frozen=True)
class CompareSpec:
    scenario: str
    rounds: int
    duration_s: float
    ttft_slo_s: float | None
    itl_slo_s: float | None
    converge_timeout_s: float
    resamples: int = 5000
    seed: int = 1

    def check(self) -> None:
        if self.rounds < MIN_ROUNDS:
            raise InputError(f"at least {MIN_ROUNDS} rounds per arm are needed for a confidence interval",
                             field="--rounds")
        if self.rounds > 100:
            raise InputError("at most 100 rounds", field="--rounds")
        if not 0 < self.duration_s <= 3600:
            raise InputError("seconds per round must be within (0, 3600]", field="--duration")
        if not 0 <= self.converge_timeout_s <= 7200:
            raise InputError("must be within [0, 7200] s", field="--converge-timeout")
        for flag, v in (("--slo-ttft-ms", self.ttft_slo_s), ("--slo-itl-ms", self.itl_slo_s)):
            if v is not None and not 0 < v <= 3600:
                raise InputError("must be > 0 (and under an hour)", field=flag)


def round_figures(arm: str, n: int, run: LevelRun, spec: CompareSpec, t0: float, started: float) -> dict[str, Any]:
    level = summarize_level(run)
    g = goodput(run.results, max(run.wall_s, 1e-9), spec.ttft_slo_s, spec.itl_slo_s)
    return {"arm": arm, "round": n, "t_s": round(started - t0, 3), "wall_s": level["wall_s"],
            "requests": level["requests"], "ok": level["ok"], "errors": level["errors"],
            "error_count": sum(level["errors"].values()), "tokens_per_s": level["tokens_per_s"],
            "requests_per_s": level["requests_per_s"], "goodput_requests_per_s": g.requests_per_s,
            "goodput_tokens_per_s": g.tokens_per_s, "slo_met": g.met, "ttft_s": level["ttft_s"],
            "itl_s": level["itl_s"], "label": level["label"]}


def ratios(rounds: list[dict[str, Any]], resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    out = {}
    for key, _title in RATIO_FIGURES:
        a = [r[key] for r in rounds if r["arm"] == "A"]
        b = [r[key] for r in rounds if r["arm"] == "B"]
        out[key] = bootstrap_ratio(a, b, resamples=resamples, seed=seed).as_dict()
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def progress_line(r: dict[str, Any], rounds: int) -> str:
    return (f"round {r['round']}/{rounds} {r['arm']}: goodput {r['goodput_requests_per_s']:.2f} req/s "
            f"({r['goodput_tokens_per_s']:.1f} tok/s), {r['tokens_per_s']:.1f} tok/s, ttft p50/p95 "
            f"{_ms(r['ttft_s']['p50'])}/{_ms(r['ttft_s']['p95'])} ms, itl p95 {_ms(r['itl_s']['p95'])} ms, "
            f"errors {r['error_count']}")


def _measure(arm_name: str, arm: Arm, n: int, load: RoundLoad, spec: CompareSpec, t0: float) -> dict[str, Any]:
    url = arm.start()
    try:
        started = time.monotonic()
        run = load(url)
        figures = round_figures(arm_name, n, run, spec, t0, started)
        figures["arm_state"] = arm.after_round()
    finally:
        arm.stop()
    return figures


def run_compare_loop(spec: CompareSpec, arm_a: Arm, arm_b: ConvergingArm, load: RoundLoad,
                     precheck: Callable[[], None], restore: Callable[[], None],
                     progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Converge B, then `spec.rounds` pairs A, B; returns the JSON-able report (rounds, ratios, converge)."""
    spec.check()
    t0 = time.monotonic()
    started = dt.datetime.now(dt.UTC)
    rounds: list[dict[str, Any]] = []
    events: list[str] = []
    try:
        events.append("precheck start")
        precheck()
        progress(f"converge: driving the load on B until its controller converges "
                 f"(at most {spec.converge_timeout_s:g} s)")
        events.append("converge")
        converge = arm_b.converge(load, spec.converge_timeout_s)
        progress(f"converge: {converge.get('summary', converge)}")
        for n in range(1, spec.rounds + 1):
            events.append(f"precheck {n}")
            precheck()
            for name, arm in (("A", arm_a), ("B", arm_b)):
                events.append(f"{name}{n}")
                progress(f"round {n}/{spec.rounds} {name}: starting")
                figures = _measure(name, arm, n, load, spec, t0)
                rounds.append(figures)
                progress(progress_line(figures, spec.rounds))
        events.append("precheck end")
        precheck()
    except BaseException:
        try:
            for arm in (arm_a, arm_b):
                with contextlib.suppress(Exception):
                    arm.stop()
        finally:
            restore()
        raise
    return {"kind": "hosttune bench --compare", "started": started.isoformat(timespec="seconds"),
            "wall_s": round(time.monotonic() - t0, 1), "spec": asdict(spec),
            "arms": {"A": arm_a.describe(), "B": arm_b.describe()}, "converge": converge, "order": events,
            "rounds": rounds, "ratios": ratios(rounds, spec.resamples, spec.seed), "host_restored": True}
