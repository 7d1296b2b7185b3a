"""docs/security.md and docs/reliability.md say only what tests prove: every test they name exists, and every
claim in docs/security.md (a bullet outside a "Not defended:" list) names at least one test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE_RE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
EVIDENCE_DOCS = ("docs/security.md", "docs/reliability.md")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


@pytest.mark.parametrize("doc", EVIDENCE_DOCS)
def test_every_named_test_exists(doc: str) -> None:
    text = (REPO / doc).read_text()
    refs = NODE_RE.findall(text)
    assert refs, f"{doc} names no test"
    missing = []
    cache: dict[str, set[str]] = {}
    for file, name in refs:
        path = REPO / file
        if not path.exists():
            missing.append(f"{file} (no such file)")
            continue
        names = cache.setdefault(file, _test_names(path))
        if name not in names:
            missing.append(f"{file}::{name}")
    assert not missing, f"{doc} names tests that do not exist: {sorted(set(missing))}"


def claims(text: str) -> list[str]:
    """The bullets of a doc that make a claim: top-level '- ' items with their indented continuation lines, except
    those in a 'Not defended:' list (which runs to the next heading)."""
    out: list[tuple[bool, list[str]]] = []
    undefended = False
    for line in text.splitlines():
        if line.startswith("#"):
            undefended = False
        elif line.strip() == "Not defended:":
            undefended = True
        if line.startswith("- "):
            out.append((undefended, [line]))
        elif out and line.startswith("  ") and line.strip():
            out[-1][1].append(line.strip())
    return [" ".join(lines) for undefended, lines in out if not undefended]


def test_every_security_claim_names_a_test() -> None:
    found = claims((REPO / "docs/security.md").read_text())
    assert len(found) >= 20, "the claim parser found too few bullets: has docs/security.md changed shape?"
    unproven = [c[:100] for c in found if not NODE_RE.search(c)]
    assert not unproven, f"claims in docs/security.md that name no test: {unproven}"


def test_the_claim_check_can_fail() -> None:
    text = ("## A\n- **claimed** but unproven\n  still the same bullet\n- proven by\n  tests/unit/x.py::test_y\n\n"
            "Not defended:\n- a gap\n## B\n- another unproven\n")
    found = claims(text)
    assert found == ["- **claimed** but unproven still the same bullet", "- proven by tests/unit/x.py::test_y",
                     "- another unproven"]
    assert [c for c in found if not NODE_RE.search(c)] == [found[0], found[2]]


def test_security_md_states_the_worker_metrics_cap_in_force() -> None:
    from agent.telemetry.worker import MAX_METRICS_BYTES

    stated = re.search(r"`/metrics` (\d+) (KiB|MiB)", (REPO / "docs" / "security.md").read_text())
    assert stated is not None
    assert int(stated.group(1)) << (10 if stated.group(2) == "KiB" else 20) == MAX_METRICS_BYTES
