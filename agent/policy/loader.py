"""Load a policy: find it, follow `extends`, apply `when`, merge, evaluate computed values, validate.

    loaded = load_policy("llm-cpu-throughput", facts)      # a name on the search path, or a file path
    loaded.policy            # the resolved Policy the tuners consume (no expressions, no conditions left)
    loaded.where("sysctl.vm.swappiness")  -> (Path(".../base.yaml"), 12)

Every problem is an InputError naming file:line and the dotted field; nothing here touches the host.
docs/policies.md is the user's manual for the semantics.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agent.errors import HostTuneError, InputError
from agent.fsio import read_text_capped
from agent.inspect.models import HostFacts
from agent.policy.chain import SUFFIXES, ChainLoader, find_named, is_path_ref, merge
from agent.policy.computed import evaluate_computed
from agent.policy.conditions import Condition, ConditionApplier
from agent.policy.inline import InlineRules
from agent.policy.model import Policy
from agent.policy.namespace import FactNamespace
from agent.policy.validate import validate_tree
from agent.policy.yamlnodes import MAX_FILE_BYTES, Node, locations, nearest_location, node_at

ENV_POLICY_PATH = "HOSTTUNE_POLICY_PATH"
ETC_POLICIES = Path("/etc/hosttune/policies")
REPO_POLICIES = Path(__file__).resolve().parent.parent.parent / "policies"
DEFAULT_CPU_POLICY = "llm-cpu-throughput"
DEFAULT_GPU_POLICY = "llm-gpu-throughput"
OWN_KEYS = ("name", "description")  # never inherited: they describe one file

E = TypeVar("E", bound=HostTuneError)


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy  # resolved: extends merged, when applied, computed values evaluated
    source: Path  # the file named by the user (or found for the name)
    chain: list[Path]  # extends chain, base first, the source last
    locations: dict[str, tuple[Path, int]]  # dotted field -> (file, line) its final value came from
    computed: dict[str, str] = field(default_factory=dict)  # field -> expression that produced its value
    deferred: dict[str, str] = field(default_factory=dict)  # field -> expression left unevaluated (no facts)
    conditions: list[Condition] = field(default_factory=list)  # every `when` met, with its result
    facts_used: bool = False  # False: offline, conditions needing facts were kept unevaluated

    def where(self, field: str) -> tuple[Path, int] | None:
        """Location of a field, or of its nearest enclosing section that has one."""
        return nearest_location(self.locations, field)

    def locate(self, e: E, *, or_source: bool = False) -> E:
        """Point an error that names a policy field (raised after loading: by a tuner's plan, the worker's
        preparation) at the file and line that set it; `or_source`: at least at the policy file. Returns `e`."""
        if e.field and not e.path:
            where = self.where(e.field)
            if where is not None:
                e.path, e.line = str(where[0]), where[1]
            elif or_source:
                e.path = str(self.source)
        return e


@dataclass(frozen=True)
class PolicyInfo:
    name: str
    path: Path
    description: str | None
    extends: list[str] = field(default_factory=list)


def policy_search_path() -> list[Path]:
    """$HOSTTUNE_POLICY_PATH (colon-separated), /etc/hosttune/policies, this checkout's policies/, and
    <sys.prefix>/share/hosttune/policies (wheel installs). Earlier directories shadow later ones."""
    dirs = [Path(p) for p in os.environ.get(ENV_POLICY_PATH, "").split(":") if p]
    dirs += [ETC_POLICIES, REPO_POLICIES, Path(sys.prefix) / "share" / "hosttune" / "policies"]
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def default_policy_name(facts: HostFacts | None) -> str:
    """The policy `make run` and the daemon use when none is named: GPU throughput where there are GPUs."""
    return DEFAULT_GPU_POLICY if facts is not None and facts.gpus else DEFAULT_CPU_POLICY


def list_policies(search_path: Sequence[Path] | None = None) -> list[PolicyInfo]:
    dirs = list(search_path) if search_path is not None else policy_search_path()
    seen: dict[str, PolicyInfo] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted(p for p in d.iterdir() if p.suffix in SUFFIXES and p.is_file()):
            if path.stem not in seen:
                seen[path.stem] = _info(path)
    return sorted(seen.values(), key=lambda i: i.name)


def _info(path: Path) -> PolicyInfo:
    description: str | None = None
    extends: list[str] = []
    try:
        data = yaml.safe_load(read_text_capped(path, MAX_FILE_BYTES))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, InputError, RecursionError):
        data = None
        description = "(unreadable: run `hosttune policy validate` on it)"
    if isinstance(data, dict):
        if isinstance(data.get("description"), str):
            description = data["description"]
        ext = data.get("extends")
        extends = [ext] if isinstance(ext, str) else [e for e in ext if isinstance(e, str)] if isinstance(
            ext, list) else []
    return PolicyInfo(path.stem, path, description, extends)


def find_policy(ref: str | Path, search_path: Sequence[Path] | None = None) -> Path:
    """A path as given, or NAME looked up as NAME.yaml on the search path."""
    dirs = list(search_path) if search_path is not None else policy_search_path()
    if isinstance(ref, Path) or is_path_ref(ref):
        path = Path(ref)
        if not path.is_file():
            raise InputError("policy file not found", path=path)
        return path
    found, _ = find_named(ref, dirs)
    if found is None:
        names = [i.name for i in list_policies(dirs)]
        from agent.policy.fieldtypes import closest

        guess = closest(ref, names)
        hint = f" (did you mean {guess!r}?)" if guess else f" (available: {', '.join(names) or 'none'})"
        raise InputError(f"no policy named {ref!r} on the search path{hint}")
    return found


def load_policy(ref: str | Path, facts: HostFacts | None = None, *, search_path: Sequence[Path] | None = None,
                context: Mapping[str, Any] | None = None, model_dirs: Sequence[Path] | None = None) -> LoadedPolicy:
    """`model_dirs` given: `ref` is a policy submitted over the API and gets agent.policy.inline's rules."""
    dirs = list(search_path) if search_path is not None else policy_search_path()
    source = find_policy(ref, dirs)
    inline = InlineRules(source, tuple(model_dirs)) if model_dirs is not None else None
    return _load(ChainLoader(dirs, inline=inline), source, facts, context)


def load_policy_text(text: str, source: Path, facts: HostFacts | None = None, *,
                     search_path: Sequence[Path] | None = None, context: Mapping[str, Any] | None = None,
                     model_dirs: Sequence[Path] = ()) -> LoadedPolicy:
    """A policy submitted over the API, validated from its text before anything is written: errors and
    locations name `source` (where the caller keeps the text if it applies it; it need not exist yet)."""
    dirs = list(search_path) if search_path is not None else policy_search_path()
    inline = InlineRules(source, tuple(model_dirs))
    return _load(ChainLoader(dirs, text=text, inline=inline), source, facts, context)


def _load(chain: ChainLoader, source: Path, facts: HostFacts | None, context: Mapping[str, Any] | None
          ) -> LoadedPolicy:
    files = chain.load(source)
    model_ref = _worker_model(files)
    inline = chain.inline if model_ref is not None and chain.inline is not None \
        and chain.inline.is_inline(model_ref.file) else None
    ns = FactNamespace(facts, context, model=lambda: _model_facts(model_ref, inline))

    applier = ConditionApplier(ns)
    merged: Node | None = None
    leaf = files[-1]
    for pf in files:
        if pf is not leaf:
            for key in OWN_KEYS:
                pf.root.value.pop(key, None)
        applier.apply(pf.root)
        merged = pf.root if merged is None else merge(merged, pf.root)
    assert merged is not None
    if "name" not in merged.value:
        merged.value["name"] = Node(source.stem, source, 1)
    if leaf.extends is not None:
        merged.value["extends"] = leaf.extends

    computed = evaluate_computed(merged, ns)
    policy = validate_tree(merged, computed.evaluated)
    if chain.inline is not None and policy.worker is not None and "worker.model" in computed.evaluated:
        model_node = node_at(merged, ("worker", "model"))
        if model_node is not None and chain.inline.is_inline(model_node.file):
            chain.inline.check_model(Node(policy.worker.model, model_node.file, model_node.line))
    return LoadedPolicy(policy=policy, source=source, chain=[pf.path for pf in files], locations=locations(merged),
                        computed=computed.evaluated, deferred=computed.deferred, conditions=applier.seen,
                        facts_used=facts is not None)


def _worker_model(files: list[Any]) -> Node | None:
    """The worker's model as the chain names it (the last plain `worker.model`), for `model.*` names.

    Taken before conditions apply, so a condition may itself use model.* without a chicken-and-egg problem.
    Returns a default-model Node when some file has a worker section but none names a model.
    """
    found: Node | None = None
    has_worker = False
    for pf in files:
        worker = pf.root.value.get("worker")
        if worker is None or not worker.is_map():
            continue
        has_worker = True
        model = worker.value.get("model")
        if model is not None and isinstance(model.value, str) and not model.value.startswith("="):
            found = model
    if found is None and has_worker:
        return Node("default", files[-1].path, 1)
    return found


def _model_facts(model: Node | None, inline: InlineRules | None) -> dict[str, Any] | None:
    if model is None:
        return None
    from agent.model_files import resolve_model

    try:
        path = inline.check_model(model) if inline is not None else resolve_model(str(model.value))
        size = path.stat().st_size
    except InputError as e:
        raise InputError(f"model.* names need the worker model: {e.message}", path=model.file, line=model.line,
                         field="worker.model") from None
    except OSError as e:
        raise InputError(f"cannot read the worker model: {e.strerror}", path=model.file, line=model.line,
                         field="worker.model") from None
    return {"path": str(path), "size_bytes": size}
