"""The names an expression may use: host facts, a few derived conveniences, the worker's model, and context.

    cpu.cores, memory.total_bytes, thp.available, cpufreq.available, gpus.count, gpus.0.memory_total_bytes,
    cpu.numa_nodes.count, sysctl.vm.swappiness (a string: int(...) it), kernel.cmdline_params.isolcpus
    numa.count, numa.node0.cores (physical cores), numa.node0.cpus.count, numa.node0.memory_free_bytes
    model.size_bytes, model.path      (the worker section's model, resolved like the worker does)
    anything passed as context        (load_policy(context=...), `--set` on the CLI)

Names are checked against the HostFacts *schema*, so a typo is an error at load time even without facts.
At evaluation, a name the schema allows but this host lacks (gpus.0 with no GPU, numa.node1 on one node, a
sysctl key that is absent) reads as null: comparisons with null are false, arithmetic on it is an error.
Lists have `.count` and numeric indices; mapping facts with free-form keys (sysctl) take the rest of the
name as the key.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from agent.errors import InputError
from agent.inspect.models import HostFacts, NumaNode
from agent.policy import fieldtypes as ann_walk
from agent.policy.expr import ExprError, Name

NUMA_NODE_RE = re.compile(r"^node(\d+)$")
SCALARS = (int, float, str, bool)


class NumaNodeView(NumaNode):
    """numa.nodeN: a NUMA node's facts plus its physical core count."""

    cores: int


class ModelView(BaseModel):
    """model.*: the worker's resolved model file."""

    path: str
    size_bytes: int


def numa_view(facts: HostFacts) -> dict[str, Any]:
    """numa.count and numa.node<N> from the CPU facts; cores = SMT sibling groups with a CPU in the node."""
    groups = facts.cpu.smt_siblings
    view: dict[str, Any] = {"count": len(facts.cpu.numa_nodes)}
    for node in facts.cpu.numa_nodes:
        cpus = set(node.cpus)
        cores = sum(1 for g in groups if cpus.intersection(g)) if groups else len(cpus)
        view[f"node{node.id}"] = {**node.model_dump(mode="json"), "cores": cores}
    return view


class FactNamespace:
    """Resolves expression names. `facts=None` means offline: fact names are checked but not evaluable."""

    def __init__(self, facts: HostFacts | None, context: Mapping[str, Any] | None = None,
                 model: Callable[[], dict[str, Any] | None] | None = None) -> None:
        self.facts = facts
        self.context = _nest(context or {})
        self._model_provider = model
        self._model: dict[str, Any] | None = None
        self._model_loaded = False
        self._data: dict[str, Any] | None = None

    # ------------------------------------------------------------ static checks

    def check(self, name: Name) -> None:
        """Raise ExprError when the name cannot exist on any host (unknown fact, typo, bad part)."""
        parts = name.path
        root = parts[0]
        if root in self.context:
            _check_data(self.context[root], parts, 1)
            return
        if root == "model":
            _check_schema(ModelView, parts, 1)
            return
        if root == "numa":
            if len(parts) == 1:
                return
            if parts[1] == "count":
                _tail_must_end(parts, 2)
                return
            if not NUMA_NODE_RE.match(parts[1]):
                raise ExprError(f"unknown fact {'.'.join(parts[:2])!r}: use numa.count or numa.node<N>.<field>",
                                name.pos + 1)
            _check_schema(NumaNodeView, parts, 2)
            return
        _check_schema(HostFacts, parts, 0, roots=self.roots())

    def roots(self) -> list[str]:
        return sorted({*HostFacts.model_fields, "numa", "model", *self.context})

    def needs_facts(self, name: Name) -> bool:
        return name.path[0] not in self.context and name.path[0] != "model"

    def evaluable(self, name: Name) -> bool:
        """Whether the name can be resolved now (offline, only context and model names can)."""
        if self.facts is not None or name.path[0] in self.context:
            return True
        if name.path[0] == "model":
            try:
                return self.model_data() is not None
            except (InputError, OSError):
                return False  # offline, a model file that is not here just defers the value
        return False

    # ------------------------------------------------------------ evaluation

    def model_data(self) -> dict[str, Any] | None:
        if not self._model_loaded:
            self._model = self._model_provider() if self._model_provider else None
            self._model_loaded = True
        return self._model

    def lookup(self, name: Name) -> Any:
        parts = name.path
        root = parts[0]
        if root in self.context:
            return _walk_data(self.context[root], parts, 1)
        if root == "model":
            data = self.model_data()
            if data is None:
                raise ExprError("model.* needs a `worker:` section with a model (or a `model` context value)",
                                name.pos + 1)
            return _walk_data(data, parts, 1)
        if self.facts is None:
            raise ExprError(f"{name.dotted} needs host facts", name.pos + 1)
        if self._data is None:
            self._data = self.facts.model_dump(mode="json")
            self._data["numa"] = numa_view(self.facts)
        return _walk_data(self._data, parts, 0)


def _nest(context: Mapping[str, Any]) -> dict[str, Any]:
    """Context keys may be dotted ("model.size_bytes") or nested; both become nested dicts."""
    out: dict[str, Any] = {}
    for key, value in context.items():
        parts = str(key).split(".")
        cur = out
        for part in parts[:-1]:
            nxt = cur.get(part)
            if not isinstance(nxt, dict):
                nxt = cur[part] = {}
            cur = nxt
        cur[parts[-1]] = value
    return out


def _tail_must_end(parts: tuple[str, ...], i: int) -> None:
    if i < len(parts):
        raise ExprError(f"{'.'.join(parts[:i])} is a value: it has no part {parts[i]!r}")


def _unknown(parts: tuple[str, ...], i: int, options: list[str]) -> ExprError:
    dotted = ".".join(parts[: i + 1])
    guess = ann_walk.closest(parts[i], options)
    hint = f" (did you mean {'.'.join((*parts[:i], guess))!r}?)" if guess else ""
    return ExprError(f"unknown fact {dotted!r}{hint}")


def _list_part(parts: tuple[str, ...], i: int) -> ExprError:
    name = ".".join(parts[:i])
    return ExprError(f"unknown fact {'.'.join(parts[: i + 1])!r}: {name} is a list, use {name}.count or "
                     f"{name}.<index>")


def _check_schema(model: type[BaseModel], parts: tuple[str, ...], i: int, roots: list[str] | None = None) -> None:
    ann: Any = model
    while i < len(parts):
        part = parts[i]
        alts = ann_walk.members(ann)
        target = alts[0] if alts else ann
        origin = typing.get_origin(target)
        if ann_walk.is_model(target):
            fields = target.model_fields
            if part not in fields:
                raise _unknown(parts, i, roots if (roots and i == 0) else list(fields))
            ann = fields[part].annotation
        elif origin is list:
            if part == "count":
                _tail_must_end(parts, i + 1)
                return
            if not part.isdigit():
                raise _list_part(parts, i)
            ann = typing.get_args(target)[0]
        elif origin is dict:
            value_ann = typing.get_args(target)[1]
            if all(a in SCALARS for a in ann_walk.members(value_ann)) or typing.get_origin(value_ann) is list:
                return  # free-form keys (sysctl.vm.swappiness): the rest of the name is the key
            ann = value_ann
        else:
            raise ExprError(f"{'.'.join(parts[:i])} is a value: it has no part {part!r}")
        i += 1


def _check_data(data: Any, parts: tuple[str, ...], i: int) -> None:
    while i < len(parts):
        part = parts[i]
        if isinstance(data, dict):
            if part not in data:
                rest = ".".join(parts[i:])
                if rest in data:
                    return
                raise _unknown(parts, i, [str(k) for k in data])
            data = data[part]
        elif isinstance(data, list):
            if part == "count":
                _tail_must_end(parts, i + 1)
                return
            if not part.isdigit():
                raise _list_part(parts, i)
            return  # index bounds are checked at evaluation
        else:
            raise ExprError(f"{'.'.join(parts[:i])} is a value: it has no part {part!r}")
        i += 1


def _walk_data(data: Any, parts: tuple[str, ...], i: int) -> Any:
    """Follow a name through plain data; a part the host lacks makes the whole name null."""
    while i < len(parts):
        part = parts[i]
        if isinstance(data, dict):
            if part in data:
                data = data[part]
            else:
                return data.get(".".join(parts[i:]))
        elif isinstance(data, list):
            if part == "count":
                return len(data)
            idx = int(part) if part.isdigit() else -1
            if not 0 <= idx < len(data):
                return None
            data = data[idx]
        else:
            return None
        i += 1
    return data
