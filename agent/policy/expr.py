"""The small expression language of policies: `when:` conditions and computed values ("=ceil(x / 2Mi)").

Policies run as root, so there is no eval and no Python AST: a tokenizer and a recursive-descent parser build a
tree of a dozen node types, and an evaluator walks it. Names are dotted paths looked up in plain data (host
facts), never Python attributes; only the whitelisted functions can be called; numbers are bounded (no 10**10**9,
no 1e308 * 10); operands are type-checked (no `True + 1`, no `"a" * 10**6`).

Grammar (Python-like precedence):
    expr     := or ['if' or 'else' expr]
    or       := and ('or' and)*
    and      := not ('and' not)*
    not      := 'not' not | compare
    compare  := sum [('=='|'!='|'<'|'<='|'>'|'>='|'in'|'not' 'in') sum]
    sum      := product (('+'|'-') product)*
    product  := unary (('*'|'/'|'//'|'%') unary)*
    unary    := ('-'|'+') unary | power
    power    := atom ['**' unary]
    atom     := NUMBER[Ki|Mi|Gi|Ti] | STRING | true | false | null | NAME | FUNC '(' args ')' | '(' expr ')'
              | '[' [expr (',' expr)*] ']'
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
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


# ---------------------------------------------------------------- syntax tree


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


# ---------------------------------------------------------------- tokenizer

_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:Ki|Mi|Gi|Ti)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|\d+))*)
  | (?P<str>"[^"\\]*(?:\\.[^"\\]*)*"|'[^'\\]*(?:\\.[^'\\]*)*')
  | (?P<op>\*\*|//|==|!=|<=|>=|[-+*/%<>(),\[\]])
""", re.VERBOSE)


@dataclass(frozen=True)
class Token:
    kind: str  # num, name, str, op, kw, end
    text: str
    pos: int  # 0-based offset


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_EXPR_CHARS:
        raise ExprError(f"expression is longer than {MAX_EXPR_CHARS} characters")
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise ExprError(f"unexpected character {text[pos]!r}", pos + 1)
        kind = m.lastgroup or ""
        if kind != "ws":
            word = m.group()
            if kind == "name" and word in KEYWORDS:
                kind = "kw"
            tokens.append(Token(kind, word, pos))
        pos = m.end()
        if kind in ("num", "name") and pos < len(text) and (text[pos].isalnum() or text[pos] in "_."):
            raise ExprError(f"unexpected {text[pos]!r} after {m.group()!r} (units are Ki, Mi, Gi, Ti)", pos + 1)
    tokens.append(Token("end", "", len(text)))
    return tokens


# ---------------------------------------------------------------- parser

_COMPARE_OPS = {"==", "!=", "<", "<=", ">", ">="}


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at(self, kind: str, text: str | None = None) -> bool:
        return self.tok.kind == kind and (text is None or self.tok.text == text)

    def expect(self, kind: str, text: str) -> Token:
        if not self.at(kind, text):
            raise self.error(f"expected {text!r}")
        return self.take()

    def error(self, message: str) -> ExprError:
        found = "end of expression" if self.tok.kind == "end" else repr(self.tok.text)
        return ExprError(f"{message}, found {found}", self.tok.pos + 1)

    def parse(self) -> Expr:
        if self.at("end"):
            raise ExprError("empty expression")
        expr = self.expr()
        if not self.at("end"):
            raise self.error("unexpected text after the expression")
        return expr

    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ExprError(f"expression nested more than {MAX_NESTING} levels deep", self.tok.pos + 1)
        try:
            then = self.or_()
            if self.at("kw", "if"):
                pos = self.take().pos
                cond = self.or_()
                self.expect("kw", "else")
                return IfElse(pos, cond, then, self.expr())
            return then
        finally:
            self.depth -= 1

    def or_(self) -> Expr:
        left = self.and_()
        while self.at("kw", "or"):
            pos = self.take().pos
            left = Binary(pos, "or", left, self.and_())
        return left

    def and_(self) -> Expr:
        left = self.not_()
        while self.at("kw", "and"):
            pos = self.take().pos
            left = Binary(pos, "and", left, self.not_())
        return left

    def not_(self) -> Expr:
        if self.at("kw", "not"):
            pos = self.take().pos
            return Unary(pos, "not", self.nested(self.not_))
        return self.compare()

    def compare(self) -> Expr:
        left = self.sum()
        op = None
        if self.tok.kind == "op" and self.tok.text in _COMPARE_OPS:
            op = self.tok.text
        elif self.at("kw", "in"):
            op = "in"
        elif self.at("kw", "not") and self.tokens[self.i + 1].kind == "kw" and self.tokens[self.i + 1].text == "in":
            self.take()
            op = "not in"
        if op is None:
            return left
        pos = self.take().pos
        node = Binary(pos, op, left, self.sum())
        if (self.tok.kind == "op" and self.tok.text in _COMPARE_OPS) or self.at("kw", "in"):
            raise self.error("chained comparisons are not supported: use `and`")
        return node

    def sum(self) -> Expr:
        left = self.product()
        while self.tok.kind == "op" and self.tok.text in ("+", "-"):
            tok = self.take()
            left = Binary(tok.pos, tok.text, left, self.product())
        return left

    def product(self) -> Expr:
        left = self.unary()
        while self.tok.kind == "op" and self.tok.text in ("*", "/", "//", "%"):
            tok = self.take()
            left = Binary(tok.pos, tok.text, left, self.unary())
        return left

    def unary(self) -> Expr:
        if self.tok.kind == "op" and self.tok.text in ("-", "+"):
            tok = self.take()
            return Unary(tok.pos, tok.text, self.nested(self.unary))
        return self.power()

    def power(self) -> Expr:
        base = self.atom()
        if self.at("op", "**"):
            pos = self.take().pos
            return Binary(pos, "**", base, self.nested(self.unary))
        return base

    def nested(self, rule: Callable[[], Expr]) -> Expr:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ExprError(f"expression nested more than {MAX_NESTING} levels deep", self.tok.pos + 1)
        try:
            return rule()
        finally:
            self.depth -= 1

    def atom(self) -> Expr:
        tok = self.tok
        if tok.kind == "num":
            self.take()
            return Literal(tok.pos, _number(tok))
        if tok.kind == "str":
            self.take()
            return Literal(tok.pos, _unquote(tok))
        if tok.kind == "kw" and tok.text in ("true", "false", "null"):
            self.take()
            return Literal(tok.pos, {"true": True, "false": False, "null": None}[tok.text])
        if tok.kind == "name":
            self.take()
            if self.at("op", "("):
                return self.call(tok)
            parts = tuple(tok.text.split("."))
            for part in parts:
                if part.startswith("_"):
                    raise ExprError(f"name {tok.text!r}: parts starting with '_' are not allowed", tok.pos + 1)
            return Name(tok.pos, parts)
        if self.at("op", "("):
            self.take()
            inner = self.expr()
            self.expect("op", ")")
            return inner
        if self.at("op", "["):
            pos = self.take().pos
            items: list[Expr] = []
            if not self.at("op", "]"):
                items.append(self.expr())
                while self.at("op", ","):
                    self.take()
                    items.append(self.expr())
            self.expect("op", "]")
            return ListExpr(pos, tuple(items))
        raise self.error("expected a value")

    def call(self, name: Token) -> Expr:
        if name.text not in FUNCTIONS:
            raise ExprError(f"unknown function {name.text!r}: only {', '.join(FUNCTIONS)} can be called",
                            name.pos + 1)
        self.expect("op", "(")
        args: list[Expr] = []
        if not self.at("op", ")"):
            args.append(self.expr())
            while self.at("op", ","):
                self.take()
                args.append(self.expr())
        self.expect("op", ")")
        return Call(name.pos, name.text, tuple(args))


def _number(tok: Token) -> int | float:
    text, scale = tok.text, 1
    if text[-2:] in UNITS:
        text, scale = text[:-2], UNITS[text[-2:]]
    try:
        value: int | float = int(text) if text.isdigit() else float(text)
    except ValueError:
        raise ExprError(f"bad number {tok.text!r}", tok.pos + 1) from None
    value = _check_number(value * scale, tok.pos)
    if isinstance(value, float) and value.is_integer() and scale != 1:
        return int(value)
    return value


def _unquote(tok: Token) -> str:
    body = tok.text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def excerpt(text: str, limit: int = 80) -> str:
    """The expression as quoted in an error message: at most `limit` characters (a 1000-character one is noise)."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def parse(text: str) -> Expr:
    """Parse an expression (without the leading '=' of computed values)."""
    tree = _Parser(text).parse()
    if tree_depth(tree) > MAX_TREE_DEPTH:
        raise ExprError(f"expression has more than {MAX_TREE_DEPTH} operations chained in one term: split it")
    return tree


# ---------------------------------------------------------------- evaluator

Lookup = Callable[[Name], Any]


def evaluate(expr: Expr, lookup: Lookup) -> Any:
    """Evaluate with `lookup` resolving names (it raises ExprError for names that do not resolve)."""
    return _Eval(lookup).eval(expr)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_number(v: Any, pos: int) -> Any:
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
    if _is_num(v):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "mapping"
    return type(v).__name__


class _Eval:
    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup

    def eval(self, e: Expr) -> Any:
        if isinstance(e, Literal):
            return e.value
        if isinstance(e, Name):
            return self.lookup(e)
        if isinstance(e, ListExpr):
            return [self.eval(item) for item in e.items]
        if isinstance(e, Call):
            return self.call(e)
        if isinstance(e, Unary):
            return self.unary(e)
        if isinstance(e, IfElse):
            return self.eval(e.then) if self.boolean(e.cond, "if") else self.eval(e.other)
        if isinstance(e, Binary):
            return self.binary(e)
        raise ExprError(f"unsupported expression node {type(e).__name__}", e.pos + 1)  # pragma: no cover

    def boolean(self, e: Expr, what: str) -> bool:
        v = self.eval(e)
        if not isinstance(v, bool):
            raise ExprError(f"`{what}` needs true or false, got {describe(v)} {_short(v)}", e.pos + 1)
        return v

    def unary(self, e: Unary) -> Any:
        if e.op == "not":
            return not self.boolean(e.operand, "not")
        v = self.eval(e.operand)
        if not _is_num(v):
            raise ExprError(f"unary {e.op} needs a number, got {describe(v)}", e.pos + 1)
        return -v if e.op == "-" else v

    def binary(self, e: Binary) -> Any:
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

    def call(self, e: Call) -> Any:
        args = [self.eval(a) for a in e.args]
        return _call(e.func, args, e.pos)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def _order(op: str, a: Any, b: Any, pos: int) -> bool:
    if a is None or b is None:
        return False  # an unknown fact satisfies no ordering (documented)
    if not ((_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise ExprError(f"cannot compare {describe(a)} {_short(a)} with {describe(b)} {_short(b)} using {op}",
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
    if not (_is_num(a) and _is_num(b)):
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
    return _check_number(r, pos)


def _power(a: int | float, b: int | float, pos: int) -> int | float:
    if isinstance(a, int) and isinstance(b, int):
        if b < 0:
            if a == 0:
                raise ExprError("division by zero", pos + 1)
            return _check_number(float(a) ** b, pos)
        if abs(a) > 1 and abs(a).bit_length() * b > MAX_INT_BITS + 64:
            raise ExprError(f"number too large (more than {MAX_INT_BITS} bits)", pos + 1)
    try:
        r = a ** b
    except (OverflowError, ZeroDivisionError):
        raise ExprError("number out of range", pos + 1) from None
    return _check_number(r, pos)


def _call(func: str, args: list[Any], pos: int) -> Any:
    def need(n_min: int, n_max: int) -> None:
        if not n_min <= len(args) <= n_max:
            want = str(n_min) if n_min == n_max else f"{n_min} to {n_max}"
            raise ExprError(f"{func}() takes {want} argument(s), got {len(args)}", pos + 1)

    def number(v: Any) -> int | float:
        if not _is_num(v):
            raise ExprError(f"{func}() needs a number, got {describe(v)} {_short(v)}", pos + 1)
        return v

    if func in ("ceil", "floor", "abs"):
        need(1, 1)
        x = number(args[0])
        if func == "abs":
            return abs(x)
        return _check_number(math.ceil(x) if func == "ceil" else math.floor(x), pos)
    if func == "round":
        need(1, 2)
        x = number(args[0])
        if len(args) == 1:
            return _check_number(round(x), pos)
        digits = args[1]
        if not isinstance(digits, int) or isinstance(digits, bool) or not -20 <= digits <= 20:
            raise ExprError("round(x, n) needs an integer n between -20 and 20", pos + 1)
        return round(x, digits)
    if func == "int":
        need(1, 1)
        v = args[0]
        if isinstance(v, str):
            try:
                return _check_number(int(v.strip()), pos)
            except ValueError:
                raise ExprError(f"int() cannot read {_short(v)} as an integer", pos + 1) from None
        return _check_number(int(number(v)), pos)
    if func in ("min", "max"):
        if len(args) == 1 and isinstance(args[0], list):
            args = list(args[0])
        if not args:
            raise ExprError(f"{func}() needs at least one value", pos + 1)
        if not (all(_is_num(v) for v in args) or all(isinstance(v, str) for v in args)):
            kinds = ", ".join(sorted({describe(v) for v in args}))
            raise ExprError(f"{func}() needs numbers (or strings), got {kinds}", pos + 1)
        return min(args) if func == "min" else max(args)
    raise ExprError(f"unknown function {func!r}", pos + 1)  # pragma: no cover - the parser checks
