"""The text report of `hosttune bench --compare`: every round, each arm's mean, and the B/A ratios."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from agent.bench.compare import RATIO_FIGURES
from agent.bench.stats import mean
from agent.render import table


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _row(label: str, r: dict[str, Any]) -> list[Any]:
    return [label, f"{r['goodput_requests_per_s']:.2f}", f"{r['goodput_tokens_per_s']:.1f}",
            f"{r['tokens_per_s']:.1f}", _ms(r["ttft_s"]["p50"]), _ms(r["ttft_s"]["p95"]), _ms(r["itl_s"]["p50"]),
            _ms(r["itl_s"]["p95"]), r["error_count"]]


def _mean_row(arm: str, rounds: list[dict[str, Any]]) -> list[Any]:
    mine = [r for r in rounds if r["arm"] == arm]
    if not mine:
        return [f"{arm} mean", "-", "-", "-", "", "", "", "", ""]
    return [f"{arm} mean ({len(mine)})", f"{mean([r['goodput_requests_per_s'] for r in mine]):.2f}",
            f"{mean([r['goodput_tokens_per_s'] for r in mine]):.1f}",
            f"{mean([r['tokens_per_s'] for r in mine]):.1f}", "", "", "", "", sum(r["error_count"] for r in mine)]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_compare(report: dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    spec = report["spec"]
    slo = report.get("slo") or {}
    out.write(f"bench --compare: scenario {spec['scenario']}, {spec['rounds']} rounds x {spec['duration_s']:g} s "
              f"per arm, SLO ttft {slo.get('ttft_ms')} ms / itl p95 {slo.get('itl_ms')} ms\n")
    out.write(f"A: {report['arms']['A'].get('what')}\nB: {report['arms']['B'].get('what')} "
              f"(policy {report['arms']['B'].get('policy')})\n")
    out.write(f"converge: {report['converge'].get('summary')}\n\n")
    rounds = report["rounds"]
    rows = [_row(f"{r['arm']}{r['round']}", r) for r in rounds]
    rows += [_mean_row("A", rounds), _mean_row("B", rounds)]
    table(["round", "goodput req/s", "goodput tok/s", "tok/s", "ttft p50 ms", "p95", "itl p50 ms", "p95", "err"],
          rows, out)
    out.write("\n")
    for key, title in RATIO_FIGURES:
        r = report["ratios"][key]
        high = "unbounded" if r['high'] is None and r['low'] is not None else _fmt(r['high'])
        out.write(f"B/A {title}: {_fmt(r['ratio'])}  [{_fmt(r['low'])}, {high}] "
                  f"({r['level'] * 100:g}% {'paired ' if r.get('paired') else ''}bootstrap interval, "
                  f"{r['resamples']} resamples, seed {r['seed']})"
                  f"{'; ' + r['note'] if r.get('note') else ''}\n")
    out.write(f"host restored to the snapshot after the last B round: {report.get('host_restored')}\n")
