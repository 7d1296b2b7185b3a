"""`extends:` — finding parent policies and the order their files are merged in.

A parent is named (`extends: base`: NAME.yaml next to the file, then on the search path) or given as a path
relative to the file (`extends: ../site/common.yaml`). Several parents (`extends: [a, b]`) merge in the order
listed. The chain is linearised depth-first, parents before children, each file once: with a diamond
(A extends [B, C], both extend base) the order is base, B, C, A, so C's own settings win over B's and base is
not merged a second time over B's overrides.

A name never resolves to a file already in the chain being resolved, so /etc/hosttune/policies/base.yaml may
say `extends: base` to build on the shipped base; a real cycle (a -> b -> a) is an error naming the loop.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from agent.errors import InputError
from agent.policy.inline import InlineRules
from agent.policy.yamlnodes import Node, kind_of, parse_policy_yaml, read_policy_yaml

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
SUFFIXES = (".yaml", ".yml")
MAX_CHAIN = 32


@dataclass
class PolicyFile:
    path: Path
    root: Node  # the file's own content, `extends` removed
    extends: Node | None


def is_path_ref(ref: str) -> bool:
    return "/" in ref or ref.endswith(SUFFIXES)


def find_named(name: str, dirs: list[Path], skip: frozenset[Path] = frozenset()) -> tuple[Path | None, bool]:
    """First NAME.yaml/.yml in `dirs` not in `skip` (resolved); also whether a skipped file matched."""
    skipped = False
    for d in dirs:
        for suffix in SUFFIXES:
            candidate = d / f"{name}{suffix}"
            if candidate.is_file():
                if _key(candidate) in skip:
                    skipped = True
                    continue
                return candidate, skipped
    return None, skipped


def _key(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


class ChainLoader:
    """`text`: the source's content given directly (an API body, validated before anything is written);
    `inline`: the restrictions for such a body (see agent.policy.inline)."""

    def __init__(self, search_path: list[Path], *, text: str | None = None,
                 inline: InlineRules | None = None) -> None:
        self.search_path = search_path
        self.text = text
        self.inline = inline
        self.order: list[PolicyFile] = []
        self.done: set[Path] = set()

    def load(self, source: Path) -> list[PolicyFile]:
        self.source = source
        self.visit(source, [])
        return self.order

    def read(self, path: Path) -> Node:
        if self.text is not None and path == self.source:
            return parse_policy_yaml(self.text, path)
        return read_policy_yaml(path)

    def visit(self, path: Path, stack: list[Path]) -> None:
        key = _key(path)
        if key in self.done:
            return
        if len(stack) >= MAX_CHAIN:
            raise InputError(f"extends chain is deeper than {MAX_CHAIN} files", path=path)
        root = self.read(path)
        if self.inline is not None and self.inline.is_inline(path):
            self.inline.check_own(root)
        ext = root.value.pop("extends", None)
        pf = PolicyFile(path, root, ext)
        for ref, ref_node in self.refs(pf):
            parent = self.resolve(ref, ref_node, pf, [*stack, path])
            try:
                self.visit(parent, [*stack, path])
            except InputError as e:
                if e.line is None and e.path == str(parent):  # unreadable as a whole: say which extends named it
                    raise InputError(f"parent policy {str(parent)!r}: {e.message}", path=ref_node.file,
                                     line=ref_node.line, field="extends") from None
                raise
        self.order.append(pf)
        self.done.add(key)

    @staticmethod
    def refs(pf: PolicyFile) -> list[tuple[str, Node]]:
        ext = pf.extends
        if ext is None or ext.value is None:
            return []
        items = ext.value if ext.is_list() else [ext]
        out = []
        for item in items:
            if not isinstance(item.value, str) or not item.value.strip():
                raise InputError(f"`extends:` takes a policy name or path (or a list of them), not "
                                 f"{kind_of(item.value)}", path=item.file, line=item.line, field="extends")
            out.append((item.value.strip(), item))
        return out

    def resolve(self, ref: str, node: Node, child: PolicyFile, stack: list[Path]) -> Path:
        on_stack = frozenset(_key(p) for p in stack)
        inline = self.inline is not None and self.inline.is_inline(child.path)
        if inline and is_path_ref(ref):
            assert self.inline is not None
            self.inline.refuse_path_extends(ref, node)
        if is_path_ref(ref):
            parent = Path(os.path.normpath(child.path.parent / ref))
            if not parent.is_file():
                raise InputError(f"parent policy {ref!r} not found (looked for {parent})", path=node.file,
                                 line=node.line, field="extends")
            if _key(parent) in on_stack:
                raise self.cycle(stack, parent, node)
            return parent
        if not NAME_RE.match(ref):
            raise InputError(f"bad policy name {ref!r}: use letters, digits, '_', '-', '.' (or a path)",
                             path=node.file, line=node.line, field="extends")
        # An inline body's own directory is the daemon's store of earlier bodies, not a policy directory.
        dirs = list(self.search_path) if inline else [child.path.parent, *self.search_path]
        found, skipped = find_named(ref, dirs, on_stack)
        if found is not None:
            return found
        if skipped:
            looped = next((p for p in stack if p.stem == ref), stack[0])
            raise self.cycle(stack, looped, node)
        where = ", ".join(str(d) for d in dirs)
        raise InputError(f"parent policy {ref!r} not found (looked in {where})", path=node.file, line=node.line,
                         field="extends")

    @staticmethod
    def cycle(stack: list[Path], again: Path, node: Node) -> InputError:
        start = next((i for i, p in enumerate(stack) if _key(p) == _key(again)), 0)
        loop = " -> ".join(p.name for p in [*stack[start:], again])
        return InputError(f"extends cycle: {loop}", path=node.file, line=node.line, field="extends")


def merge(base: Node, over: Node) -> Node:
    """Deep merge: mappings key by key (the child wins), everything else (lists included) replaced whole.

    A child's null deletes the inherited key; a null with nothing to delete stays (pydantic then says whether
    null is allowed there).
    """
    if not (base.is_map() and over.is_map()):
        return over
    out = dict(base.value)
    for key, child in over.value.items():
        if child.value is None and key in out:
            del out[key]
        elif key in out:
            out[key] = merge(out[key], child)
        else:
            out[key] = child
    return Node(out, over.file, over.line)
