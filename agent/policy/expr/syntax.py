"""The expression language's syntax tree, its limits and its error; shared by the parser and the evaluator."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_EXPR_CHARS = 1000
MAX_NESTING = 32
MAX_TREE_DEPTH = 100  # operators chained in one operand path (`1+1+...+1`): the evaluator recurses per level
MAX_INT_BITS = 256
MAX_STR_CHARS = 4096
MAX_LIST_ITEMS = 10_000

UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
KEYWORDS = {"and", "or", "not", "if", "else", "in", "true", "false", "null"}
FUNCTIONS = ("abs", "ceil", "floor", "int", "max", "min", "round")


class ExprError(Exception):
    """A syntax or evaluation error; `column` is 1-based within the expression text when known."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column

    def __str__(self) -> str:
        return f"{self.message} (column {self.column})" if self.column else self.message


@dataclass(frozen=True)
class Expr:
    pos: int


@dataclass(frozen=True)
class Literal(Expr):
    value: Any


@dataclass(frozen=True)
class Name(Expr):
    path: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@dataclass(frozen=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Call(Expr):
    func: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "-", "+", "not"
    operand: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str  # arithmetic, comparison, "in", "not in", "and", "or"
    left: Expr
    right: Expr


@dataclass(frozen=True)
class IfElse(Expr):
    cond: Expr
    then: Expr
    other: Expr


def _children(expr: Expr) -> tuple[Expr, ...]:
    if isinstance(expr, ListExpr):
        return expr.items
    if isinstance(expr, Call):
        return expr.args
    if isinstance(expr, Unary):
        return (expr.operand,)
    if isinstance(expr, Binary):
        return (expr.left, expr.right)
    if isinstance(expr, IfElse):
        return (expr.cond, expr.then, expr.other)
    return ()


def tree_depth(expr: Expr) -> int:
    """Depth of the syntax tree, measured without recursion (a left-associative chain is as deep as it is long)."""
    deepest, stack = 0, [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in _children(node))
    return deepest


def names(expr: Expr) -> Iterator[Name]:
    """Every fact name the expression mentions, left to right (for load-time checks that do not need facts)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Name):
            yield node
        stack.extend(reversed(_children(node)))


def excerpt(text: str, limit: int = 80) -> str:
    """The expression as quoted in an error message: at most `limit` characters (a 1000-character one is noise)."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
