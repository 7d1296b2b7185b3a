"""Engine knobs as the slow lever sees them: neighbours along the ladder (one knob, one rung at a time) and the
out-of-memory fallback ladder. Pure functions over plain dicts, so the same code serves llama-server's restart
knobs (parallel, ubatch, ctx, cache types) and the torch worker's live ones (max_batch, kv_budget_tokens).
"""

from __future__ import annotations

import math
from typing import Any

from agent.control.config import Axis, ControllerConfig, Rung

Knobs = dict[str, Any]


def key(knobs: Knobs) -> str:
    """A stable text form of a knob set (tabu keys, logs)."""
    return ",".join(f"{k}={knobs[k]}" for k in sorted(knobs) if knobs[k] is not None)


def value(knobs: Knobs, knob: str, defaults: dict[str, int | str]) -> Any:
    v = knobs.get(knob)
    return defaults.get(knob) if v is None else v


def _sort_key(v: int | str) -> tuple[int, float | str]:
    return (0, float(v)) if isinstance(v, int | float) else (1, str(v))


def neighbours(knobs: Knobs, axis: Axis, defaults: dict[str, int | str]) -> list[Knobs]:
    """The rung above, then the rung below, of one axis (a value between rungs has the nearest on each side)."""
    cur = value(knobs, axis.knob, defaults)
    if cur is None:
        return []
    values = sorted(axis.values, key=_sort_key)
    out: list[Knobs] = []
    if cur in values:
        i = values.index(cur)
        up = values[i + 1] if i + 1 < len(values) else None
        down = values[i - 1] if i > 0 else None
    elif isinstance(cur, int | float) and all(isinstance(v, int | float) for v in values):
        up = next((v for v in values if float(v) > cur), None)
        down = next((v for v in reversed(values) if float(v) < cur), None)
    else:
        return []
    for target in (up, down):
        if target is not None:
            out.append({**knobs, axis.knob: target})
    return out


def valid(knobs: Knobs, defaults: dict[str, int | str]) -> bool:
    """Combinations the engine would refuse (llama-server: ubatch above batch)."""
    ub, b = value(knobs, "ubatch", defaults), value(knobs, "batch", defaults)
    return not (isinstance(ub, int) and isinstance(b, int) and ub > b)


def candidates(knobs: Knobs, cfg: ControllerConfig) -> list[Knobs]:
    """Every one-rung step from `knobs`, in ladder order, up before down."""
    out: list[Knobs] = []
    for axis in cfg.ladder:
        out += [k for k in neighbours(knobs, axis, cfg.knob_defaults) if valid(k, cfg.knob_defaults)]
    return out


def step_down(knobs: Knobs, rungs: list[Rung], defaults: dict[str, int | str]) -> tuple[Knobs, str] | None:
    """The first fallback rung that still applies: (new knobs, what it did), or None at the bottom."""
    for rung in rungs:
        if rung.op == "set":
            changed = {k: v for k, v in rung.values.items() if value(knobs, k, defaults) != v}
            if changed:
                return {**knobs, **changed}, ", ".join(f"{k} -> {v}" for k, v in changed.items())
            continue
        assert rung.knob is not None
        cur = value(knobs, rung.knob, defaults)
        if not isinstance(cur, int) or cur <= rung.minimum:
            continue
        new = max(rung.minimum, math.floor(cur * (0.5 if rung.op == "halve" else rung.factor)))
        if new < cur:
            return {**knobs, rung.knob: new}, f"{rung.knob} {cur} -> {new}"
    return None


def concurrency_ratio(old: Knobs, new: Knobs, knob: str | None, defaults: dict[str, int | str]) -> float | None:
    """new/old of the knob that bounds concurrency in the engine (slots), if both are numbers and differ."""
    if knob is None:
        return None
    a, b = value(old, knob, defaults), value(new, knob, defaults)
    if isinstance(a, int) and isinstance(b, int) and a > 0 and a != b:
        return b / a
    return None
