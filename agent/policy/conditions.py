"""`when:` conditions: keep or drop a section, a list item, or one sysctl/kernel_cmdline entry.

Conditions are applied to each file on its own, before the extends merge: a section whose condition is false is
as if that file had not written it, so an inherited value stays in force. (Applying them after the merge would
let a child's false condition silently delete what its parent set.)

Without facts (offline validation) a condition is parsed and its names checked, the section is kept, and the
condition is reported with result None.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.errors import InputError
from agent.policy import expr
from agent.policy.namespace import FactNamespace
from agent.policy.yamlnodes import Node, dotted, kind_of

WHEN = "when"
# Mappings whose keys are free-form (sysctl names, boot parameters): a `when` there guards one entry, written
# as `key: {value: V, when: COND}`; a `when` directly in the mapping guards the whole section.
FREE_FORM_SECTIONS = ("sysctl", "kernel_cmdline")
ENTRY_KEYS = {"value", WHEN}


@dataclass(frozen=True)
class Condition:
    """One `when:` met while loading: where it sits, its text, and its result (None: not evaluated, no facts)."""

    field: str
    expr: str
    result: bool | None
    file: Path
    line: int


class ConditionApplier:
    def __init__(self, ns: FactNamespace) -> None:
        self.ns = ns
        self.seen: list[Condition] = []

    def apply(self, root: Node) -> None:
        """Apply every condition in one policy file's tree (in place)."""
        assert isinstance(root.value, dict)
        if WHEN in root.value:
            node = root.value[WHEN]
            raise InputError("`when:` applies to sections and list items, not to a whole policy",
                             path=node.file, line=node.line, field=WHEN)
        for key in list(root.value):
            child = root.value[key]
            if key in FREE_FORM_SECTIONS and child.is_map() and not self.keep_section(child, (key,)):
                del root.value[key]
            elif key in FREE_FORM_SECTIONS and child.is_map():
                self.entries(child, (key,))
            elif not self.visit(child, (key,)):
                del root.value[key]

    def visit(self, node: Node, path: tuple[str | int, ...]) -> bool:
        """Apply conditions below `node`; False when the node's own condition drops it."""
        if node.is_map():
            if not self.keep_section(node, path):
                return False
            for key in list(node.value):
                if not self.visit(node.value[key], (*path, key)):
                    del node.value[key]
        elif node.is_list():
            node.value = [item for i, item in enumerate(node.value) if self.visit(item, (*path, i))]
        return True

    def keep_section(self, node: Node, path: tuple[str | int, ...]) -> bool:
        cond = node.value.pop(WHEN, None)
        return cond is None or self.evaluate(cond, path)

    def entries(self, section: Node, path: tuple[str | int, ...]) -> None:
        """Collapse `key: {value: V, when: C}` entries of a free-form section to V, or drop them."""
        for key in list(section.value):
            entry = section.value[key]
            if not entry.is_map():
                continue
            keys = set(entry.value)
            if not keys <= ENTRY_KEYS or "value" not in keys:
                extra = sorted(keys - ENTRY_KEYS)
                what = f"unknown key {extra[0]!r} in" if extra else "missing `value:` in"
                raise InputError(f"{what} a conditional entry: write it as {{value: ..., when: ...}}",
                                 path=entry.file, line=entry.line, field=dotted((*path, key)))
            cond = entry.value.get(WHEN)
            if cond is not None and not self.evaluate(cond, (*path, key)):
                del section.value[key]
                continue
            value = entry.value["value"]
            section.value[key] = Node(value.value, value.file, value.line)

    def evaluate(self, cond: Node, path: tuple[str | int, ...]) -> bool:
        field = dotted((*path, WHEN))
        if isinstance(cond.value, bool):
            self.seen.append(Condition(dotted(path), str(cond.value).lower(), cond.value, cond.file, cond.line))
            return cond.value
        if not isinstance(cond.value, str):
            raise InputError(f"`when:` must be a condition (a string such as 'gpus.count > 0'), "
                             f"not {kind_of(cond.value)}", path=cond.file, line=cond.line, field=field)
        text = cond.value.strip()
        text = text[1:] if text.startswith("=") else text
        try:
            tree = expr.parse(text)
            names = list(expr.names(tree))
            for name in names:
                self.ns.check(name)
            if not all(self.ns.evaluable(n) for n in names):
                self.seen.append(Condition(dotted(path), text, None, cond.file, cond.line))
                return True  # offline: keep the section; the caller reports the unevaluated condition
            result = expr.evaluate(tree, self.ns.lookup)
        except expr.ExprError as e:
            raise InputError(f"in condition {expr.excerpt(text)}: {e}", path=cond.file, line=cond.line,
                             field=field) from None
        if not isinstance(result, bool):
            raise InputError(f"condition {expr.excerpt(text)} gave {expr.describe(result)} {result!r}, not true/false",
                             path=cond.file, line=cond.line, field=field)
        self.seen.append(Condition(dotted(path), text, result, cond.file, cond.line))
        return result
