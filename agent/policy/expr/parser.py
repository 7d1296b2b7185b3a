"""Tokenizer and recursive-descent parser: expression text -> syntax tree (grammar in agent.policy.expr)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.policy.expr.syntax import (
    FUNCTIONS,
    KEYWORDS,
    MAX_EXPR_CHARS,
    MAX_NESTING,
    MAX_TREE_DEPTH,
    UNITS,
    Binary,
    Call,
    Expr,
    ExprError,
    IfElse,
    ListExpr,
    Literal,
    Name,
    Unary,
    tree_depth,
)
from agent.policy.expr.values import check_number

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
    value = check_number(value * scale, tok.pos)
    if isinstance(value, float) and value.is_integer() and scale != 1:
        return int(value)
    return value


def _unquote(tok: Token) -> str:
    body = tok.text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def parse(text: str) -> Expr:
    """Parse an expression (without the leading '=' of computed values)."""
    tree = _Parser(text).parse()
    if tree_depth(tree) > MAX_TREE_DEPTH:
        raise ExprError(f"expression has more than {MAX_TREE_DEPTH} operations chained in one term: split it")
    return tree
