"""The report of `bench/os_effects.py`, from its recorded rounds: each arm's median per figure, and for each
change (arm A = the host as found, arm B = one OS change) the B/A ratio per figure with its paired bootstrap
interval (agent/bench/stats.py: rounds are the unit, round i of A paired with round i of B). Pure: the unit tests
feed it recorded rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from agent.bench.stats import bootstrap_ratio
from agent.errors import InputError
from agent.render import table

# figure -> (column title, where a B/A ratio means something). Memory kinds the arm A does not use at all
# (hugetlb, locked) have a zero A: their medians say it, a ratio would not.
FIGURES: dict[str, tuple[str, bool]] = {
    "load_cold_s": ("load cold s", True),
    "load_warm_s": ("load warm s", True),
    "prefill_tok_s": ("prefill tok/s", True),
    "decode_tok_s": ("decode tok/s", True),
    "rss_mib": ("RSS MiB", True),
    "hugetlb_mib": ("Hugetlb MiB", False),
    "anon_huge_mib": ("AnonHuge MiB", False),
    "file_pmd_mib": ("FilePmd MiB", False),
    "locked_mib": ("Locked MiB", False),
}
RATIO_FIGURES = [k for k, (_, ratio) in FIGURES.items() if ratio]
Round = Mapping[str, Any]   # {"round": i, "arm": name, figure: value, ...}


def arm_series(rounds: Sequence[Round], arm: str, figure: str) -> list[float]:
    """The figure of `arm`, one value per round, in round order (the pairing the bootstrap relies on). Rounds
    recorded before a figure existed do not have it: they are left out of that figure's medians."""
    mine = sorted((r for r in rounds if r["arm"] == arm and r.get(figure) is not None), key=lambda r: int(r["round"]))
    return [float(r[figure]) for r in mine]


def medians(rounds: Sequence[Round], arms: Sequence[str]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for arm in arms:
        out[arm] = {}
        for figure in FIGURES:
            values = arm_series(rounds, arm, figure)
            out[arm][figure] = statistics.median(values) if values else None
    return out


def change_ratios(rounds: Sequence[Round], a: str, b: str, *, resamples: int, seed: int,
                  level: float = 0.95) -> dict[str, dict[str, Any]]:
    """figure -> RatioCI as a dict (B/A of the round means, paired by round), for the ratio figures."""
    ra, rb = sorted(int(r["round"]) for r in rounds if r["arm"] == a), sorted(
        int(r["round"]) for r in rounds if r["arm"] == b)
    if ra != rb:
        raise InputError(f"arms {a} and {b} ran different rounds ({ra} vs {rb}): they cannot be paired")
    out = {}
    for figure in RATIO_FIGURES:
        ci = bootstrap_ratio(arm_series(rounds, a, figure), arm_series(rounds, b, figure), resamples=resamples,
                             seed=seed, level=level, paired=True)
        out[figure] = ci.as_dict()
    return out


def build_report(rounds: Sequence[Round], changes: Mapping[str, tuple[str, str]], *, resamples: int = 5000,
                 seed: int = 1) -> dict[str, Any]:
    """changes: name -> (arm A, arm B). The arms' medians and every change's ratios."""
    arms = sorted({r["arm"] for r in rounds})
    return {"medians": medians(rounds, arms),
            "changes": {name: {"a": a, "b": b, "ratios": change_ratios(rounds, a, b, resamples=resamples,
                                                                       seed=seed)}
                        for name, (a, b) in changes.items()}}


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def ratio_cell(r: Mapping[str, Any]) -> str:
    if r.get("ratio") is None:
        return "-"
    if r.get("low") is None or r.get("high") is None:
        return f"{r['ratio']:.3f} (n<5)"
    mark = "*" if r["low"] > 1.0 or r["high"] < 1.0 else ""
    return f"{r['ratio']:.3f} [{r['low']:.3f}-{r['high']:.3f}]{mark}"


def print_report(report: Mapping[str, Any], out: TextIO) -> None:
    meds = report["medians"]
    out.write("medians per arm (each round a fresh llama-server)\n")
    table(["arm", *(FIGURES[f][0] for f in FIGURES)],
          [[arm, *(_num(meds[arm][f]) for f in FIGURES)] for arm in meds], out)
    out.write("\nB/A per change: ratio of round means [95% paired bootstrap interval]; * = the interval "
              "excludes 1\n")
    rows = []
    for name, change in report["changes"].items():
        rows.append([name, f"{change['a']} -> {change['b']}",
                     *(ratio_cell(change["ratios"][f]) for f in RATIO_FIGURES)])
    table(["change", "A -> B", *(FIGURES[f][0] for f in RATIO_FIGURES)], rows, out)
