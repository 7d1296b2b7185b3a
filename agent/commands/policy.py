"""`hosttune policy list|show|validate|schema`: find, resolve, check and describe policies. Never writes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import InputError
from agent.render import print_json, table

if TYPE_CHECKING:
    from agent.inspect.models import HostFacts

HELP = """\
Policies are YAML files (docs/policies.md): sysctl, hugepages, thp, cpu, block, gpu, kernel_cmdline, worker
and slo sections, with `extends:` to build on another policy, `when:` conditions on host facts, and computed
values ("=ceil(model.size_bytes / 2Mi * 1.1)"). A policy is named (NAME.yaml on the search path:
$HOSTTUNE_POLICY_PATH, /etc/hosttune/policies, the shipped policies/) or given as a path.
"""

EPILOG = """\
examples:
  hosttune policy list
  hosttune policy show llm-cpu-throughput                  offline: conditions kept, not evaluated
  hosttune policy show llm-gpu-throughput --facts-from-host   resolved for this host
  hosttune policy show llm-gpu-throughput --rootfs tests/fixtures/hosts/two-socket-gpu --json
  hosttune policy validate my-policy.yaml other.yaml       exit 0 valid, 2 invalid (one line per error)
  hosttune policy schema > policy.schema.json             JSON schema of the YAML you write
"""


def register(sub: argparse._SubParsersAction) -> None:
    from agent.commands.options import host_root_options

    p = sub.add_parser("policy", help="list, show, validate policies; print their JSON schema",
                       description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    psub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)

    lp = psub.add_parser("list", help="policies on the search path")
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=run_list)

    facts_parent = argparse.ArgumentParser(add_help=False)
    g = facts_parent.add_argument_group("host facts (for `when:` and computed values)")
    g.add_argument("--facts-from-host", action="store_true",
                   help="inspect this host (implied by --procfs/--sysfs/--rootfs) and resolve against its facts")
    g.add_argument("--facts", metavar="FILE", help="facts from a JSON file (the output of `hosttune inspect --json`)")
    g.add_argument("--set", metavar="NAME=VALUE", action="append", default=[], dest="context",
                   help="give an expression name a value, e.g. --set model.size_bytes=4Gi (a literal: number "
                        "with optional unit, true/false, or text)")

    sp = psub.add_parser("show", help="the resolved policy and where each value came from",
                         parents=[host_root_options(), facts_parent])
    sp.add_argument("name", metavar="NAME|FILE")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=run_show)

    vp = psub.add_parser("validate", help="check policy files (exit 0 valid, 2 invalid)",
                         parents=[host_root_options(), facts_parent])
    vp.add_argument("files", metavar="FILE", nargs="+")
    vp.add_argument("--json", action="store_true")
    vp.set_defaults(func=run_validate)

    schp = psub.add_parser("schema", help="JSON schema of the policy YAML")
    schp.set_defaults(func=run_schema)


# ---------------------------------------------------------------- facts and context


def wants_host_facts(args: argparse.Namespace) -> bool:
    """--facts-from-host, implied by any host root option (a fixture tree is only useful for its facts)."""
    return bool(args.facts_from_host or args.procfs or args.sysfs or args.rootfs)


def facts_for(args: argparse.Namespace) -> tuple[HostFacts | None, str]:
    """(HostFacts or None, where they came from)."""
    from agent.fsio import read_capped
    from agent.inspect.models import HostFacts

    if args.facts:
        path = Path(args.facts)
        try:
            return HostFacts.model_validate_json(read_capped(path)), f"file {path}"
        except OSError as e:
            raise InputError(f"cannot read facts: {e.strerror}", path=path, field="--facts") from None
        except ValueError as e:
            first = str(e).splitlines()
            raise InputError(f"not HostFacts JSON: {' '.join(first[:3])}", path=path, field="--facts") from None
    if not wants_host_facts(args):
        return None, "none"
    from agent.gpu.nvml import open_nvml
    from agent.hostfs import HostPaths
    from agent.inspect import collect

    paths = HostPaths.from_options(args.procfs, args.sysfs, args.rootfs).check()
    nvml = open_nvml(args.nvml_sim, dry_run=True)  # reading facts only: refuse any NVML setter
    return collect(paths, nvml=nvml), "host " + ("(live)" if paths.is_live else f"(procfs={paths.procfs}, "
                                                                               f"sysfs={paths.sysfs})")


def context_for(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.context:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--set wants NAME=VALUE, got {item!r}", field="--set")
        out[name.strip()] = literal(raw)
    return out


def literal(raw: str) -> Any:
    """4Gi -> 4294967296, 1.5 -> 1.5, true -> True, anything that is not a literal -> the text itself."""
    from agent.policy import expr

    try:
        tree = expr.parse(raw)
    except expr.ExprError:
        return raw
    if isinstance(tree, expr.Literal):
        return tree.value
    if isinstance(tree, expr.Unary) and tree.op == "-" and isinstance(tree.operand, expr.Literal):
        value = tree.operand.value
        return -value if isinstance(value, int | float) and not isinstance(value, bool) else raw
    return raw


# ---------------------------------------------------------------- commands


def run_list(args: argparse.Namespace) -> int:
    from agent.policy.loader import list_policies

    infos = list_policies()
    if args.json:
        print_json([{"name": i.name, "path": str(i.path), "description": i.description, "extends": i.extends}
                    for i in infos])
        return 0
    if not infos:
        print("no policies found on the search path (see `hosttune policy --help`)")
        return 0
    table(["NAME", "EXTENDS", "DESCRIPTION", "PATH"],
          [[i.name, ",".join(i.extends) or "-", i.description, display(i.path)] for i in infos])
    return 0


def run_show(args: argparse.Namespace) -> int:
    from agent.policy.loader import load_policy

    facts, facts_from = facts_for(args)
    loaded = load_policy(args.name, facts, context=context_for(args))
    if args.json:
        print_json(show_json(loaded, facts_from))
        return 0
    pol = loaded.policy
    print(f"policy {pol.name}: {pol.description or ''}".rstrip(": "))
    print(f"source: {display(loaded.source)}")
    print("chain:  " + " -> ".join(display(p) for p in loaded.chain))
    print(f"facts:  {facts_from}")
    if loaded.conditions:
        print("\nconditions:")
        table(["WHERE", "WHEN", "RESULT", "FROM"],
              [[c.field, c.expr, _result(c.result), f"{display(c.file)}:{c.line}"] for c in loaded.conditions])
    if not loaded.facts_used and any(c.result is None for c in loaded.conditions):
        print("(no facts: conditions were checked but not evaluated; their sections are shown kept)")
    print("\nsettings:")
    rows = []
    for name, value in flatten(pol.model_dump(mode="json", exclude_unset=True)):
        if name in ("name", "description", "extends"):
            continue
        shown = json.dumps(value) if not isinstance(value, str) else value
        if name in loaded.deferred:
            shown = f"={loaded.deferred[name]}  (needs facts)"
        elif name in loaded.computed:
            shown = f"{shown}  (={loaded.computed[name]})"
        where = loaded.where(name)
        rows.append([name, shown, f"{display(where[0])}:{where[1]}" if where else "default"])
    table(["FIELD", "VALUE", "FROM"], rows)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from agent.policy.loader import load_policy

    facts, facts_from = facts_for(args)
    context = context_for(args)
    results = []
    for ref in args.files:
        try:
            loaded = load_policy(Path(ref), facts, context=context)
        except InputError as e:
            results.append({"file": ref, "valid": False,
                            "error": {"message": e.message, "path": e.path, "line": e.line, "field": e.field,
                                      "text": str(e)}})
            continue
        results.append({"file": ref, "valid": True, "name": loaded.policy.name,
                        "chain": [str(p) for p in loaded.chain], "facts": facts_from,
                        "unevaluated_conditions": [c.field for c in loaded.conditions if c.result is None],
                        "deferred": loaded.deferred})
    if args.json:
        print_json(results)
    else:
        for r in results:
            if r["valid"]:
                notes = []
                if r["unevaluated_conditions"]:
                    notes.append(f"{len(r['unevaluated_conditions'])} condition(s) not evaluated without facts")
                if r["deferred"]:
                    notes.append(f"{len(r['deferred'])} computed value(s) need facts")
                extra = f" ({'; '.join(notes)})" if notes else ""
                print(f"ok: {r['file']}: policy {r['name']}{extra}")
            else:
                print(f"hosttune: error: {r['error']['text']}", file=sys.stderr)
    return 0 if all(r["valid"] for r in results) else InputError.exit_code


def run_schema(args: argparse.Namespace) -> int:
    from agent.policy.schema import user_policy_schema

    print_json(user_policy_schema())
    return 0


# ---------------------------------------------------------------- helpers


def show_json(loaded: Any, facts_from: str) -> dict[str, Any]:
    return {
        "name": loaded.policy.name,
        "source": str(loaded.source),
        "chain": [str(p) for p in loaded.chain],
        "facts": facts_from,
        "policy": loaded.policy.model_dump(mode="json"),
        "locations": {k: {"file": str(v[0]), "line": v[1]} for k, v in loaded.locations.items()},
        "computed": loaded.computed,
        "deferred": loaded.deferred,
        "conditions": [{"field": c.field, "when": c.expr, "result": c.result, "file": str(c.file), "line": c.line}
                       for c in loaded.conditions],
    }


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Leaf values with dotted names; empty sections kept as one row so they stay visible."""
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out.extend(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
        out = []
        for i, v in enumerate(value):
            out.extend(flatten(v, f"{prefix}.{i}"))
        return out
    return [(prefix, value)]


def _result(result: bool | None) -> str:
    return "not evaluated" if result is None else ("true (kept)" if result else "false (dropped)")


def display(path: Path) -> str:
    """A path relative to the current directory when it lies below it (shorter lines), else as is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)
