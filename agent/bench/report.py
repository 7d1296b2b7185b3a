"""Per-level figures (tokens/s, requests/s, TTFT/ITL/end-to-end percentiles, errors), as a table, JSON and a PNG.

Percentiles use the same interpolation as the gateway (agent/metrics/window.py). ITL percentiles pool every
gap of every successful request, so long generations weigh in proportion to their tokens, as users feel them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from agent.bench.goodput import goodput
from agent.bench.load import LevelRun
from agent.metrics.window import percentile
from agent.render import table

QS = (0.5, 0.95, 0.99)


def _pcts(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {f"p{round(q * 100)}": percentile(ordered, q) for q in QS}


def summarize_level(run: LevelRun, ttft_slo_s: float | None = None, itl_slo_s: float | None = None) -> dict[str, Any]:
    """The level's figures; with an SLO given, also its goodput (agent.bench.goodput)."""
    ok = [r for r in run.results if r.ok]
    errors = Counter(r.error for r in run.results if not r.ok)
    if run.dropped:
        errors["dropped"] += run.dropped
    tokens = sum(r.tokens_out for r in ok)
    wall = max(run.wall_s, 1e-9)
    itls = [g for r in ok for g in r.itl_s]
    by_kind = Counter(r.kind for r in run.results)
    summary: dict[str, Any] = {
        "scenario": run.scenario, "seed": run.seed,
        "mode": run.mode, ("concurrency" if run.mode == "closed" else "rate"): run.value, "label": run.label,
        "wall_s": run.wall_s, "requests": len(run.results), "ok": len(ok),
        "errors": dict(sorted((str(k), v) for k, v in errors.items())),
        "output_tokens": tokens, "prompt_tokens": sum(r.tokens_in or 0 for r in ok),
        "prompt_tokens_est": sum(r.tokens_in_est or 0 for r in ok),
        "sessions": len({r.session for r in run.results if r.session}),
        "tokens_per_s": tokens / wall, "requests_per_s": len(ok) / wall,
        "ttft_s": _pcts([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_s": _pcts(itls), "e2e_s": _pcts([r.e2e_s for r in ok]),
        "kinds": dict(by_kind),
        "retry_after": sorted({r.retry_after for r in run.results if r.retry_after}),
        "stale_connection_retries": sum(1 for r in run.results if r.stale_retry),
        "error_examples": sorted({f"{r.error}: {r.detail}" for r in run.results if not r.ok and r.detail})[:5],
    }
    if ttft_slo_s is not None or itl_slo_s is not None:
        summary["goodput"] = {"ttft_slo_s": ttft_slo_s, "itl_slo_s": itl_slo_s,
                              **asdict(goodput(run.results, wall, ttft_slo_s, itl_slo_s))}
    return summary


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def print_table(levels: list[dict[str, Any]], out: TextIO | None = None) -> None:
    rows = []
    slo = any("goodput" in lv for lv in levels)
    for lv in levels:
        errs = sum(lv["errors"].values())
        row = [lv["label"], lv["requests"], errs, f"{lv['tokens_per_s']:.1f}", f"{lv['requests_per_s']:.2f}",
               _ms(lv["ttft_s"]["p50"]), _ms(lv["ttft_s"]["p95"]), _ms(lv["ttft_s"]["p99"]),
               _ms(lv["itl_s"]["p50"]), _ms(lv["itl_s"]["p95"]), _ms(lv["itl_s"]["p99"])]
        if slo:
            good = lv.get("goodput")
            row += ["-", "-"] if good is None else [f"{good['met']}/{good['total']}", f"{good['requests_per_s']:.2f}"]
        rows.append(row)
    table(["level", "req", "err", "tok/s", "req/s", "ttft p50 ms", "p95", "p99", "itl p50 ms", "p95", "p99"]
          + (["slo met", "good req/s"] if slo else []), rows, out)


def plot(levels: list[dict[str, Any]], path: Path, title: str) -> str | None:
    """Write a PNG; returns a note instead when matplotlib (optional extra `bench`) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # kept: matplotlib is the optional extra `bench`, really absent from a plain install
        return "plot skipped: matplotlib is not installed (pip install 'hosttune[bench]')"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for mode, key, xlabel in (("closed", "concurrency", "concurrency"), ("open", "rate", "arrivals/s")):
        pts = [lv for lv in levels if lv["mode"] == mode]
        if not pts:
            continue
        xs = [lv[key] for lv in pts]
        axes[0].plot(xs, [lv["tokens_per_s"] for lv in pts], marker="o", label=f"{mode} loop ({xlabel})")
        for q, style in (("p50", "-"), ("p95", "--")):
            axes[1].plot(xs, [(lv["ttft_s"][q] or 0) * 1000 for lv in pts], style, marker="o",
                         label=f"{mode} {q}")
            axes[2].plot(xs, [(lv["itl_s"][q] or 0) * 1000 for lv in pts], style, marker="o",
                         label=f"{mode} {q}")
    for ax, ylabel in zip(axes, ("output tokens/s", "TTFT (ms)", "inter-token latency (ms)"), strict=True):
        ax.set_xlabel("load level")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
