"""Computed values: a string starting with '=' is an expression, evaluated after the extends merge (so a child
can replace an inherited expression with a plain value) and before validation (so its result is type-checked
like anything typed by hand).

    hugepages: [{size: 2M, count: "=ceil(model.size_bytes / 2Mi * 1.1)"}]
    worker: {threads_batch: "=cpu.cores // cpu.sockets"}

Sysctl constraints (">=1048576", "<=10") start with '>' or '<' and are not expressions. name, description and
extends are never computed. Offline (no facts), an expression that needs facts is checked and left unevaluated:
it is reported as deferred and a stand-in value the field accepts takes its place for validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.errors import InputError
from agent.policy import expr, fieldtypes
from agent.policy.model import Policy
from agent.policy.namespace import FactNamespace
from agent.policy.yamlnodes import Node, dotted, from_plain

NEVER_COMPUTED = {"name", "description", "extends"}


@dataclass
class ComputedValues:
    evaluated: dict[str, str] = field(default_factory=dict)  # field -> expression (its value is in the tree)
    deferred: dict[str, str] = field(default_factory=dict)  # field -> expression not evaluated (offline)


def evaluate_computed(root: Node, ns: FactNamespace) -> ComputedValues:
    out = ComputedValues()
    for key, child in root.value.items():
        if key not in NEVER_COMPUTED:
            root.value[key] = _visit(child, (key,), ns, out)
    return out


def _visit(node: Node, path: tuple[str | int, ...], ns: FactNamespace, out: ComputedValues) -> Node:
    if node.is_map():
        for key in list(node.value):
            node.value[key] = _visit(node.value[key], (*path, key), ns, out)
        return node
    if node.is_list():
        node.value = [_visit(item, (*path, i), ns, out) for i, item in enumerate(node.value)]
        return node
    if isinstance(node.value, str) and node.value.startswith("="):
        return _compute(node, path, ns, out)
    return node


def _compute(node: Node, path: tuple[str | int, ...], ns: FactNamespace, out: ComputedValues) -> Node:
    text = node.value[1:].strip()
    name = dotted(path)
    try:
        tree = expr.parse(text)
        names = list(expr.names(tree))
        for n in names:
            ns.check(n)
        if not all(ns.evaluable(n) for n in names):
            out.deferred[name] = text
            found = fieldtypes.walk(Policy, path)
            stand_in = fieldtypes.stand_in(found[0], found[1], node.value) if found else node.value
            return Node(stand_in, node.file, node.line)
        value = expr.evaluate(tree, ns.lookup)
    except expr.ExprError as e:
        raise InputError(f"in computed value {expr.excerpt(node.value)}: {e}", path=node.file, line=node.line,
                         field=name) from None
    out.evaluated[name] = text
    return from_plain(value, node.file, node.line)
