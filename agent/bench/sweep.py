"""`hosttune bench --sweep`: the exhaustive grid over engine knobs that need a restart — the baseline the
adaptive controller has to match (issue 5: >= 95% of the sweep's best throughput in <= 25% of its wall time).

The sweep depends on one small interface, WorkerControl ("restart the worker with these knobs, give me its URL
when it is ready"). LocalSweepControl implements it with a private llama-server; the daemon's supervisor can
implement the same two methods to sweep the production worker instead.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.bench.llama_local import LocalLlamaServer, knob_args
from agent.errors import InputError


class WorkerControl(Protocol):
    def restart_with(self, knobs: dict[str, str]) -> str:
        """Restart the worker with these engine knobs; return its base URL once it is ready."""
        ...

    def close(self) -> None: ...


def parse_grid(text: str) -> list[dict[str, str]]:
    """'np=1,2,4;ub=128,512' -> the cartesian product, in order: [{'np': '1', 'ub': '128'}, ...]."""
    axes: list[tuple[str, list[str]]] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, values = part.partition("=")
        name = name.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not vals:
            raise InputError(f"expected KNOB=V1,V2 in {part!r}", field="--sweep")
        if name in dict(axes):
            raise InputError(f"knob {name!r} appears twice", field="--sweep")
        knob_args({name: vals[0]})  # refuses unknown knobs with the list of known ones
        axes.append((name, vals))
    if not axes:
        raise InputError("empty grid", field="--sweep")
    names = [a[0] for a in axes]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(a[1] for a in axes))]


class LocalSweepControl:
    def __init__(self, model: Path, threads: int = 2, base_knobs: dict[str, str] | None = None,
                 log_path: Path | None = None, ready_timeout_s: float = 180.0) -> None:
        self.model = model
        self.threads = threads
        self.base_knobs = base_knobs or {}
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.server: LocalLlamaServer | None = None

    def restart_with(self, knobs: dict[str, str]) -> str:
        self.close()
        merged = {**self.base_knobs, **knobs}
        self.server = LocalLlamaServer(self.model, threads=self.threads, extra_args=knob_args(merged),
                                       log_path=self.log_path)
        return self.server.start(self.ready_timeout_s)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def best_point(points: list[dict[str, Any]], ttft_p95_slo_s: float | None) -> dict[str, Any] | None:
    """The (knobs, level) with the most output tokens/s among those without errors that meet the TTFT SLO."""
    best: dict[str, Any] | None = None
    for p in points:
        for lv in p["levels"]:
            if lv["ok"] == 0 or sum(lv["errors"].values()) > 0:
                continue
            p95 = lv["ttft_s"]["p95"]
            if ttft_p95_slo_s is not None and (p95 is None or p95 > ttft_p95_slo_s):
                continue
            if best is None or lv["tokens_per_s"] > best["tokens_per_s"]:
                best = {"knobs": p["knobs"], "label": lv["label"], "tokens_per_s": lv["tokens_per_s"],
                        "ttft_p95_s": p95}
    return best


def run_sweep(grid: list[dict[str, str]], control: WorkerControl,
              measure: Callable[[str], dict[str, Any]], ttft_p95_slo_s: float | None = None,
              on_point: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """For each grid point: restart the worker, measure it (`measure(url)` -> a bench report), keep the result.
    A point whose worker fails to start is recorded with its error and the sweep goes on."""
    started = time.monotonic()
    points: list[dict[str, Any]] = []
    try:
        for knobs in grid:
            t0 = time.monotonic()
            point: dict[str, Any] = {"knobs": knobs}
            try:
                url = control.restart_with(knobs)
                point["restart_s"] = time.monotonic() - t0
                point["levels"] = measure(url)["levels"]
            except Exception as e:  # one bad point (OOM at start, bad knob value) must not end the sweep
                point["error"] = f"{type(e).__name__}: {e}"
                point["levels"] = []
            point["wall_s"] = time.monotonic() - t0
            points.append(point)
            if on_point is not None:
                on_point(point)
    finally:
        control.close()
    return {"points": points, "wall_s": time.monotonic() - started, "ttft_p95_slo_s": ttft_p95_slo_s,
            "best": best_point(points, ttft_p95_slo_s)}
