"""Policy YAML read into a tree that remembers where every value was written (file and line).

Why not yaml.safe_load: after extends-merging, `when` filtering and computed values, an error in the resolved
policy must still name the file and line the user wrote. So we compose PyYAML's node graph (which carries marks)
and convert it ourselves into `Node`s, one per value, each with its own file and line. Merging moves Nodes
around whole, so the location travels with the value.

The converter also refuses what a policy never needs and what could hurt a root daemon: duplicate keys (PyYAML
silently keeps the last one), non-string keys (`on:`/`yes:` become booleans in YAML 1.1), custom tags, alias
bombs (node budget), runaway nesting (depth limit) and oversized files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.errors import InputError
from agent.fsio import read_capped

MAX_FILE_BYTES = 1 << 20
MAX_NODES = 50_000
MAX_DEPTH = 48
# No policy number needs more; YAML 1.1 base-60 integers (`1:1:1:...`) cost PyYAML quadratic time to build.
MAX_NUMBER_CHARS = 100
NUMBER_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}

MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"
# Scalars whose Python form is not useful in a policy: keep the text as written.
TEXT_TAGS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"}


@dataclass
class Node:
    """One value and where it was written. `value` is dict[str, Node], list[Node], or a plain scalar."""

    value: Any
    file: Path
    line: int

    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    def is_list(self) -> bool:
        return isinstance(self.value, list)


def read_policy_yaml(path: Path) -> Node:
    """Read and convert one policy file; every problem is an InputError naming the file (and line when known)."""
    try:
        if not path.is_file():
            raise InputError("policy file not found (or not a regular file)", path=path)
        raw = read_capped(path, MAX_FILE_BYTES)  # st_size is not trusted: procfs says 0 for endless files
    except OSError as e:
        raise InputError(f"cannot read policy file: {e.strerror or e}", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError("policy file is not valid UTF-8", path=path, line=line) from None
    return parse_policy_yaml(text, path)


def _check_nesting(loader: yaml.SafeLoader, file: Path, what: str) -> None:
    """Refuse runaway nesting from the event stream (PyYAML's parser is iterative; its composer recurses per level,
    so `[[[[...]]]]` 500 deep would otherwise end in a RecursionError without a line)."""
    depth = 0
    while not loader.check_event(yaml.StreamEndEvent):
        event = loader.get_event()
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise InputError(f"{what} is nested more than {MAX_DEPTH} levels deep", path=file,
                                 line=mark.line + 1 if mark is not None else None)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def parse_policy_yaml(text: str, file: Path) -> Node:
    """A policy's text as a located tree: a mapping of sections."""
    node = parse_yaml(text, file)
    if node is None:
        raise InputError("policy file is empty: a policy is a mapping with at least `name:`", path=file, line=1)
    if not node.is_map():
        raise InputError(f"a policy must be a mapping of sections, not {kind_of(node.value)}", path=file,
                         line=node.line)
    return node


def parse_yaml(text: str, file: Path, what: str = "policy") -> Node | None:
    """Any YAML document (a policy, the daemon config) as a located tree; None when it holds no document.
    Every problem is an InputError naming `file` and the line; `what` names the document in the limits' messages."""
    try:
        probe = yaml.SafeLoader(text)
        try:
            _check_nesting(probe, file, what)
        except yaml.YAMLError:
            pass  # the composing pass below reports syntax errors with their line
        finally:
            probe.dispose()
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:
        line = text[: max(e.position, 0)].count("\n") + 1
        raise InputError(f"YAML error: character U+{e.character:04X} is not allowed", path=file, line=line) from None
    try:
        root = loader.get_single_node()
    except yaml.reader.ReaderError as e:
        line = text[: max(e.position, 0)].count("\n") + 1
        raise InputError(f"YAML error: character U+{e.character:04X} is not allowed", path=file, line=line) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
        raise InputError(f"YAML syntax error: {problem}", path=file,
                         line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise InputError(f"YAML error: {e}", path=file) from None
    except RecursionError:
        raise InputError("YAML nesting is too deep", path=file) from None
    finally:
        loader.dispose()
    if root is None:
        return None
    return _Converter(file, loader, what).convert(root, root.start_mark.line + 1, 0)


class _Converter:
    def __init__(self, file: Path, loader: yaml.SafeLoader, what: str) -> None:
        self.file = file
        self.loader = loader
        self.what = what
        self.budget = MAX_NODES

    def fail(self, message: str, ynode: yaml.Node) -> InputError:
        return InputError(message, path=self.file, line=ynode.start_mark.line + 1)

    def convert(self, ynode: yaml.Node, line: int, depth: int) -> Node:
        self.budget -= 1
        if self.budget < 0:
            raise self.fail(f"{self.what} has more than {MAX_NODES} values (alias expansion?)", ynode)
        if depth > MAX_DEPTH:
            raise self.fail(f"{self.what} is nested more than {MAX_DEPTH} levels deep (recursive alias?)", ynode)
        if isinstance(ynode, yaml.MappingNode):
            if ynode.tag != MAP_TAG:
                raise self.fail(f"unsupported YAML tag {ynode.tag!r} on a mapping", ynode)
            return Node(self.mapping(ynode, depth), self.file, line)
        if isinstance(ynode, yaml.SequenceNode):
            if ynode.tag != SEQ_TAG:
                raise self.fail(f"unsupported YAML tag {ynode.tag!r} on a list", ynode)
            items = [self.convert(item, item.start_mark.line + 1, depth + 1) for item in ynode.value]
            return Node(items, self.file, line)
        return Node(self.scalar(ynode), self.file, line)

    def mapping(self, ynode: yaml.MappingNode, depth: int) -> dict[str, Node]:
        out: dict[str, Node] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in ynode.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                where = "policies: use `extends:`" if self.what == "policy" else f"a {self.what}"
                raise self.fail(f"YAML merge keys (<<) are not supported in {where}", key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail("mapping keys must be plain strings, not lists or mappings", key_node)
            key = self.scalar(key_node)
            if not isinstance(key, str):
                hint = " (YAML reads it as a boolean)" if isinstance(key, bool) else ""
                raise self.fail(f"key {key_node.value!r} must be a string{hint}: quote it", key_node)
            line = key_node.start_mark.line + 1
            if key in out:
                raise InputError(f"duplicate key {key!r} (first given at line {first_line[key]})",
                                 path=self.file, line=line, field=dotted([key]))
            first_line[key] = line
            out[key] = self.convert(value_node, line, depth + 1)
        return out

    def scalar(self, ynode: yaml.Node) -> Any:
        if ynode.tag in TEXT_TAGS:
            return str(ynode.value)
        if ynode.tag in NUMBER_TAGS and len(str(ynode.value)) > MAX_NUMBER_CHARS:
            raise self.fail(f"number {str(ynode.value)[:20]!r}... is longer than {MAX_NUMBER_CHARS} characters",
                            ynode)
        try:
            value = self.loader.construct_object(ynode, deep=True)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e)
            raise self.fail(f"cannot read value: {problem}", ynode) from None
        except (ValueError, OverflowError) as e:
            raise self.fail(f"cannot read value {ynode.value!r}: {e}", ynode) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(f"{ynode.value!r} is not a finite number", ynode)
        if value is not None and not isinstance(value, str | int | float | bool):
            return str(ynode.value)
        return value


def dotted(path: tuple[str | int, ...] | list[str | int]) -> str:
    """A field path as one printable line: keys with control characters or dots-only oddities are quoted."""
    return ".".join(str(p) if isinstance(p, int) or p.isprintable() else repr(p) for p in path)


def to_plain(node: Node) -> Any:
    """The Node tree as plain Python data (what pydantic validates)."""
    if isinstance(node.value, dict):
        return {k: to_plain(v) for k, v in node.value.items()}
    if isinstance(node.value, list):
        return [to_plain(v) for v in node.value]
    return node.value


def locations(node: Node, prefix: str = "") -> dict[str, tuple[Path, int]]:
    """Dotted field path -> (file, line) for every value in the tree, including the sections themselves."""
    out: dict[str, tuple[Path, int]] = {}
    if prefix:
        out[prefix] = (node.file, node.line)
    if isinstance(node.value, dict):
        for key, child in node.value.items():
            out.update(locations(child, f"{prefix}.{key}" if prefix else key))
    elif isinstance(node.value, list):
        for i, child in enumerate(node.value):
            out.update(locations(child, f"{prefix}.{i}" if prefix else str(i)))
    return out


def from_plain(value: Any, file: Path, line: int) -> Node:
    """Plain data (a computed value taken from facts) as a Node tree, every part located at (file, line)."""
    if isinstance(value, dict):
        return Node({str(k): from_plain(v, file, line) for k, v in value.items()}, file, line)
    if isinstance(value, list | tuple):
        return Node([from_plain(v, file, line) for v in value], file, line)
    return Node(value, file, line)


def nearest_location(located: Mapping[str, tuple[Path, int]], field: str) -> tuple[Path, int] | None:
    """Where a dotted field was written (see `locations`), or its nearest enclosing key that was: the place an
    error about that field points at."""
    probe = field
    while probe:
        if probe in located:
            return located[probe]
        probe = probe.rpartition(".")[0]
    return None


def nearest_node(root: Node, path: tuple[str | int, ...]) -> Node:
    """The Node at a data path, or at its nearest enclosing part that exists (the root at worst)."""
    for n in range(len(path), -1, -1):
        node = node_at(root, path[:n])
        if node is not None:
            return node
    return root


def node_at(root: Node, path: tuple[str | int, ...]) -> Node | None:
    """The Node at a data path, or None where the path leaves the tree."""
    cur = root
    for part in path:
        child = _child(cur.value, part)
        if child is None:
            return None
        cur = child
    return cur


def _child(value: Any, part: str | int) -> Node | None:
    if isinstance(value, dict):
        return value.get(part) if isinstance(part, str) else None
    if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
        return value[part]
    return None


def kind_of(value: Any) -> str:
    """A user-facing name for a value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
