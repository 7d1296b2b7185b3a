"""The PNG of `hosttune bench --compare`: each round's figures over time per arm, and the B/A ratios with their
intervals. matplotlib is the optional extra `bench` (as in agent/bench/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.bench.compare import RATIO_FIGURES

COLORS = {"A": "tab:gray", "B": "tab:blue"}


def plot_compare(report: dict[str, Any], path: Path) -> str | None:
    """Write the PNG; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # kept: matplotlib is the optional extra `bench`, really absent from a plain install
        return "plot skipped: matplotlib is not installed (pip install 'hosttune[bench]')"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for arm in ("A", "B"):
        rounds = [r for r in report["rounds"] if r["arm"] == arm]
        ts = [r["t_s"] for r in rounds]
        axes[0].plot(ts, [r["goodput_tokens_per_s"] for r in rounds], "o-", color=COLORS[arm],
                     label=f"{arm} goodput tok/s")
        axes[0].plot(ts, [r["tokens_per_s"] for r in rounds], "x--", color=COLORS[arm], label=f"{arm} tok/s")
        axes[1].plot(ts, [(r["ttft_s"]["p95"] or 0) * 1000 for r in rounds], "o-", color=COLORS[arm],
                     label=f"{arm} TTFT p95")
        axes[1].plot(ts, [(r["itl_s"]["p95"] or 0) * 1000 for r in rounds], "x--", color=COLORS[arm],
                     label=f"{arm} ITL p95")
    for ax, ylabel in ((axes[0], "output tokens/s"), (axes[1], "ms")):
        ax.set_xlabel("seconds since the compare began (round start)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    names, values, lows, highs = [], [], [], []
    for key, title in RATIO_FIGURES:
        r = report["ratios"][key]
        if r["ratio"] is None or r["low"] is None or r["high"] is None:
            continue
        names.append(title)
        values.append(r["ratio"])
        lows.append(r["ratio"] - r["low"])
        highs.append(r["high"] - r["ratio"])
    axes[2].errorbar(range(len(names)), values, yerr=[lows, highs], fmt="o", capsize=6)
    axes[2].axhline(1.0, color="tab:red", linewidth=1)
    axes[2].set_xticks(range(len(names)), names)
    axes[2].set_ylabel("B / A (95% bootstrap interval)")
    axes[2].grid(True, alpha=0.3)
    spec = report["spec"]
    fig.suptitle(f"hosttune bench --compare: {spec['scenario']}, {spec['rounds']} rounds x {spec['duration_s']:g} s"
                 f" per arm, policy {report['arms']['B'].get('policy')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
