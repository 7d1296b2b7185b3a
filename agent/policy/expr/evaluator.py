"""The evaluator: walks a syntax tree with a name lookup; operands are type-checked and every number bounded."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from agent.policy.expr import syntax
from agent.policy.expr.syntax import MAX_INT_BITS, MAX_STR_CHARS, Expr, ExprError, Name
from agent.policy.expr.values import check_number, describe, is_num, short

Lookup = Callable[[Name], Any]


def evaluate(expr: Expr, lookup: Lookup) -> Any:
    """Evaluate with `lookup` resolving names (it raises ExprError for names that do not resolve)."""
    return _Eval(lookup).eval(expr)


class _Eval:
    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup

    def eval(self, e: Expr) -> Any:
        if isinstance(e, syntax.Literal):
            return e.value
        if isinstance(e, Name):
            return self.lookup(e)
        if isinstance(e, syntax.ListExpr):
            return [self.eval(item) for item in e.items]
        if isinstance(e, syntax.Call):
            return self.call(e)
        if isinstance(e, syntax.Unary):
            return self.unary(e)
        if isinstance(e, syntax.IfElse):
            return self.eval(e.then) if self.boolean(e.cond, "if") else self.eval(e.other)
        if isinstance(e, syntax.Binary):
            return self.binary(e)
        raise ExprError(f"unsupported expression node {type(e).__name__}", e.pos + 1)  # pragma: no cover

    def boolean(self, e: Expr, what: str) -> bool:
        v = self.eval(e)
        if not isinstance(v, bool):
            raise ExprError(f"`{what}` needs true or false, got {describe(v)} {short(v)}", e.pos + 1)
        return v

    def unary(self, e: syntax.Unary) -> Any:
        if e.op == "not":
            return not self.boolean(e.operand, "not")
        v = self.eval(e.operand)
        if not is_num(v):
            raise ExprError(f"unary {e.op} needs a number, got {describe(v)}", e.pos + 1)
        return -v if e.op == "-" else v

    def binary(self, e: syntax.Binary) -> Any:
        if e.op == "and":
            return self.boolean(e.left, "and") and self.boolean(e.right, "and")
        if e.op == "or":
            return self.boolean(e.left, "or") or self.boolean(e.right, "or")
        left, right = self.eval(e.left), self.eval(e.right)
        if e.op in ("==", "!="):
            equal = _equal(left, right)
            return equal if e.op == "==" else not equal
        if e.op in ("<", "<=", ">", ">="):
            return _order(e.op, left, right, e.pos)
        if e.op in ("in", "not in"):
            found = _contains(right, left, e.pos)
            return found if e.op == "in" else not found
        return _arith(e.op, left, right, e.pos)

    def call(self, e: syntax.Call) -> Any:
        args = [self.eval(a) for a in e.args]
        return _call(e.func, args, e.pos)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def _order(op: str, a: Any, b: Any, pos: int) -> bool:
    if a is None or b is None:
        return False  # an unknown fact satisfies no ordering (documented)
    if not ((is_num(a) and is_num(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise ExprError(f"cannot compare {describe(a)} {short(a)} with {describe(b)} {short(b)} using {op}",
                        pos + 1)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _contains(container: Any, item: Any, pos: int) -> bool:
    if container is None:
        return False
    if isinstance(container, str):
        if not isinstance(item, str):
            raise ExprError(f"`in` a string needs a string on the left, got {describe(item)}", pos + 1)
        return item in container
    if isinstance(container, list):
        return any(_equal(item, x) for x in container)
    raise ExprError(f"`in` needs a list or a string on the right, got {describe(container)}", pos + 1)


def _arith(op: str, a: Any, b: Any, pos: int) -> Any:
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        if len(a) + len(b) > MAX_STR_CHARS:
            raise ExprError(f"string longer than {MAX_STR_CHARS} characters", pos + 1)
        return a + b
    if not (is_num(a) and is_num(b)):
        hint = " (is a fact unknown on this host?)" if a is None or b is None else ""
        raise ExprError(f"{op} needs numbers, got {describe(a)} and {describe(b)}{hint}", pos + 1)
    if op in ("/", "//", "%") and b == 0:
        raise ExprError("division by zero", pos + 1)
    if op == "**":
        return _power(a, b, pos)
    try:
        if op == "+":
            r = a + b
        elif op == "-":
            r = a - b
        elif op == "*":
            r = a * b
        elif op == "/":
            r = a / b
        elif op == "//":
            r = a // b
        elif op == "%":
            r = a % b
        else:  # pragma: no cover - the parser makes no other operators
            raise ExprError(f"unknown operator {op}", pos + 1)
    except OverflowError:
        raise ExprError("number out of range", pos + 1) from None
    return check_number(r, pos)


def _power(a: int | float, b: int | float, pos: int) -> int | float:
    if isinstance(a, int) and isinstance(b, int):
        if b < 0:
            if a == 0:
                raise ExprError("division by zero", pos + 1)
            return check_number(float(a) ** b, pos)
        if abs(a) > 1 and abs(a).bit_length() * b > MAX_INT_BITS + 64:
            raise ExprError(f"number too large (more than {MAX_INT_BITS} bits)", pos + 1)
    try:
        r = a ** b
    except (OverflowError, ZeroDivisionError):
        raise ExprError("number out of range", pos + 1) from None
    return check_number(r, pos)


def _call(func: str, args: list[Any], pos: int) -> Any:
    def need(n_min: int, n_max: int) -> None:
        if not n_min <= len(args) <= n_max:
            want = str(n_min) if n_min == n_max else f"{n_min} to {n_max}"
            raise ExprError(f"{func}() takes {want} argument(s), got {len(args)}", pos + 1)

    def number(v: Any) -> int | float:
        if not is_num(v):
            raise ExprError(f"{func}() needs a number, got {describe(v)} {short(v)}", pos + 1)
        return v

    if func in ("ceil", "floor", "abs"):
        need(1, 1)
        x = number(args[0])
        if func == "abs":
            return abs(x)
        return check_number(math.ceil(x) if func == "ceil" else math.floor(x), pos)
    if func == "round":
        need(1, 2)
        x = number(args[0])
        if len(args) == 1:
            return check_number(round(x), pos)
        digits = args[1]
        if not isinstance(digits, int) or isinstance(digits, bool) or not -20 <= digits <= 20:
            raise ExprError("round(x, n) needs an integer n between -20 and 20", pos + 1)
        return round(x, digits)
    if func == "int":
        need(1, 1)
        v = args[0]
        if isinstance(v, str):
            try:
                return check_number(int(v.strip()), pos)
            except ValueError:
                raise ExprError(f"int() cannot read {short(v)} as an integer", pos + 1) from None
        return check_number(int(number(v)), pos)
    if func in ("min", "max"):
        if len(args) == 1 and isinstance(args[0], list):
            args = list(args[0])
        if not args:
            raise ExprError(f"{func}() needs at least one value", pos + 1)
        if not (all(is_num(v) for v in args) or all(isinstance(v, str) for v in args)):
            kinds = ", ".join(sorted({describe(v) for v in args}))
            raise ExprError(f"{func}() needs numbers (or strings), got {kinds}", pos + 1)
        return min(args) if func == "min" else max(args)
    raise ExprError(f"unknown function {func!r}", pos + 1)  # pragma: no cover - the parser checks
