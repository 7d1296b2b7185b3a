"""The shape of the agent package: no import cycles, no module too long to read in one sitting.

Every import under agent/ is read with `ast` (imports inside functions and `if TYPE_CHECKING:` included: a lazy
import is still a dependency). `from agent.x import y` counts as importing the module agent.x.y when y is a
submodule, else as importing agent.x. Any strongly connected component of more than one module is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
MAX_LINES = 450


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The module an ImportFrom names, relative imports resolved against `name`."""
    if node.level == 0:
        return node.module or ""
    base = name.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The agent modules that module `name` imports (anywhere in its body)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, name, package)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in known:
                    out.add(sub)
                elif source in known:
                    out.add(source)
    out.discard(name)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out)


def long_modules(root: Path, limit: int = MAX_LINES) -> list[str]:
    out = []
    for name, path in modules(root).items():
        n = len(path.read_text().splitlines())
        if n > limit:
            out.append(f"{name} ({n} lines)")
    return out


# -- the checker checks itself on a small package of its own ------------------------------------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "agent"
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def test_checker_finds_a_loop_through_a_function_level_import(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from agent.b import thing\n",
        "b.py": "def thing():\n    from agent import a\n    return a\n",
        "c.py": "import agent.a\n",
    })
    assert cycles(import_graph(root)) == [["agent.a", "agent.b"]]


def test_checker_counts_from_package_import_submodule_as_the_submodule(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "pkg/__init__.py": "from agent.pkg import low\n",
        "pkg/low.py": "X = 1\n",
        "pkg/high.py": "from agent.pkg import low\n",
        "user.py": "from agent.pkg import low, X\nfrom .pkg.high import Y\n",
    })
    graph = import_graph(root)
    assert graph["agent.pkg.high"] == {"agent.pkg.low"}
    assert graph["agent.user"] == {"agent.pkg", "agent.pkg.low", "agent.pkg.high"}
    assert cycles(graph) == []


def test_checker_finds_a_loop_under_type_checking_and_relative_imports(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/base.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..high.journal import R\n",
        "high/__init__.py": "",
        "high/journal.py": "from ..low import base\n",
    })
    assert cycles(import_graph(root)) == [["agent.high.journal", "agent.low.base"]]


def test_checker_lists_long_modules(tmp_path: Path) -> None:
    root = _package(tmp_path, {"__init__.py": "", "short.py": "x = 1\n" * 3, "long.py": "x = 1\n" * 5})
    assert long_modules(root, limit=4) == ["agent.long (5 lines)"]


# -- the real package --------------------------------------------------------------------------------------------

def test_agent_has_no_import_cycles() -> None:
    found = cycles(import_graph(AGENT))
    assert not found, "import cycles under agent/ (each line one strongly connected component):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_tuning_path_goes_down_the_layers_once() -> None:
    """agent.tunable (Change, Record, Tuner, Writer) imports neither side; the tuners never import the tuning engine
    (they get its HostWriter as a tunable.writer.Writer); the engine imports the tuners."""
    graph = import_graph(AGENT)
    wrong = sorted(f"{name} -> {dep}" for name, deps in graph.items() for dep in deps
                   if (name.startswith("agent.tuners.") and dep.startswith("agent.tuning"))
                   or (name.startswith("agent.tunable") and dep.startswith(("agent.tuning", "agent.tuners"))))
    assert not wrong, "imports against the layering: " + ", ".join(wrong)
    assert "agent.tuners.registry" in graph["agent.tuning.transaction"]


def test_no_agent_module_is_over_450_lines() -> None:
    found = long_modules(AGENT)
    assert not found, f"modules under agent/ over {MAX_LINES} lines: " + ", ".join(found)


# -- layers (docs/architecture.md draws the same table) ------------------------------------------------------------

LAYERS: dict[str, int] = {
    "agent": 0, "errors": 0, "hostfs": 0, "fsio": 0, "metrics": 0, "model_files": 0, "httpguard": 0, "render": 0,
    "sdnotify": 0,
    "gpu": 1, "inspect": 1, "policy": 1, "tunable": 1,
    "tuners": 2,
    "tuning": 3, "worker": 3, "gateway": 3,
    "control": 4, "telemetry": 4,
    "api": 5, "bench": 5, "config": 5,
    "daemon": 6,
    "commands": 7, "cli": 7, "__main__": 7,
}


def package_of(module: str) -> str:
    """agent.tuning.plan -> tuning; agent.errors -> errors; agent -> agent."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    out = []
    for name, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if layers[package_of(dep)] > layers[package_of(name)]:
                out.append(f"{name} (layer {layers[package_of(name)]}) -> {dep} (layer {layers[package_of(dep)]})")
    return out


def test_checker_finds_an_import_upward(tmp_path: Path) -> None:
    root = _package(tmp_path, {"__init__.py": "", "low/__init__.py": "", "low/a.py": "from agent.high import b\n",
                               "high/__init__.py": "", "high/b.py": "from agent.low import a\n"})
    found = upward_imports(import_graph(root), {"agent": 0, "low": 0, "high": 1})
    assert found == ["agent.low.a (layer 0) -> agent.high.b (layer 1)"]


def test_every_agent_package_has_a_layer() -> None:
    packages = {package_of(m) for m in modules(AGENT)}
    assert packages == set(LAYERS), f"not in LAYERS: {sorted(packages - set(LAYERS))}; " \
                                    f"gone: {sorted(set(LAYERS) - packages)}"


def test_packages_import_only_their_layer_or_below() -> None:
    found = upward_imports(import_graph(AGENT), LAYERS)
    assert not found, "imports against the layers in docs/architecture.md:\n" + "\n".join(found)
