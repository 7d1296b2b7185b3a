"""Values in the expression language: what counts as a number, the bounds on numbers, and how a value is named
in an error message. The parser bounds number literals and the evaluator every result with check_number.
"""

from __future__ import annotations

import math
from typing import Any

from agent.policy.expr.syntax import MAX_INT_BITS, ExprError


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_number(v: Any, pos: int) -> Any:
    if isinstance(v, complex):
        raise ExprError("result is not a real number", pos + 1)
    if isinstance(v, float) and not math.isfinite(v):
        raise ExprError("number out of range", pos + 1)
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_BITS:
        raise ExprError(f"number too large (more than {MAX_INT_BITS} bits)", pos + 1)
    return v


def describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if is_num(v):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "mapping"
    return type(v).__name__


def short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
