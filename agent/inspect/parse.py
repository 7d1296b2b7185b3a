"""Strict parsers for the few procfs/sysfs formats inspection reads.

A missing file means "no data here" and gives None; a file that exists but does not parse is a broken tree and
raises InputError naming the path (and line), so `hosttune inspect` exits 2 with one clear line instead of
reporting made-up facts.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.errors import InputError
from agent.fsio import parse_cpu_list, read_int, read_str, read_text

_CPU_LIST_RE = re.compile(r"^\s*(\d+(-\d+)?)?(\s*,\s*\d+(-\d+)?)*\s*$")
_MEMINFO_RE = re.compile(r"^(?:Node\s+\d+\s+)?([A-Za-z0-9_()]+):\s+(\d+)(?:\s+(kB))?\s*$")


def read_cpu_list(path: Path) -> list[int] | None:
    """A sysfs CPU list file ('0-3,8'); None if absent, InputError if garbled."""
    text = read_str(path)
    if text is None:
        return None
    return cpu_list(text, path)


def cpu_list(text: str, path: Path | None = None) -> list[int]:
    """Parse a CPU list, rejecting anything the kernel would never write (reversed ranges, words)."""
    if not _CPU_LIST_RE.match(text):
        raise InputError(f"malformed CPU list {text[:40]!r}", path=path)
    cpus = parse_cpu_list(text)
    for part in text.split(","):
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if hi < lo:
                raise InputError(f"malformed CPU list {text[:40]!r} (range {lo}-{hi} runs backwards)", path=path)
    return sorted(set(cpus))


def meminfo(path: Path) -> dict[str, int] | None:
    """/proc/meminfo or a node's meminfo as {field: value}; 'kB' values become bytes, bare values stay counts.

    Node files prefix each line with 'Node N'; that prefix is dropped so both formats give the same keys.
    """
    text = read_text(path)
    if text is None:
        return None
    out: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MEMINFO_RE.match(line)
        if not match:
            raise InputError(f"malformed meminfo line {line.strip()[:60]!r}", path=path, line=lineno)
        name, value, unit = match.groups()
        out[name] = int(value) * 1024 if unit else int(value)
    return out


def int_list(path: Path) -> list[int] | None:
    """A whitespace-separated list of integers (a node's `distance` file)."""
    text = read_str(path)
    if text is None:
        return None
    try:
        return [int(x) for x in text.split()]
    except ValueError:
        raise InputError(f"expected integers, found {text[:40]!r}", path=path) from None


def count(path: Path) -> int:
    """A counter file that must be a non-negative integer when present (hugepage pools); 0 when absent."""
    value = read_int(path)
    if value is None:
        return 0
    if value < 0:
        raise InputError(f"expected a non-negative count, found {value}", path=path)
    return value


def numa_node(path: Path) -> int | None:
    """A device's numa_node file: -1 (no affinity) and absence both mean None."""
    value = read_int(path)
    return None if value is None or value < 0 else value


def words(path: Path) -> list[str]:
    """A whitespace-separated word list (scaling_available_governors); [] when absent."""
    text = read_str(path)
    return text.split() if text else []


def normalize_space(text: str) -> str:
    """'32768\\t60999\\n' -> '32768 60999': how multi-value sysctls are compared and reported."""
    return " ".join(text.split())


def choice(path: Path) -> tuple[str | None, list[str]]:
    """A sysfs choice file ('always [madvise] never'): (active, choices); (None, []) when absent.

    A lone word without brackets is the active one (a queue without an elevator shows just 'none'); several
    words and no (or several) bracketed ones is a garbled file.
    """
    text = read_str(path)
    if text is None:
        return None, []
    words_ = text.split()
    active = [w[1:-1] for w in words_ if len(w) > 2 and w.startswith("[") and w.endswith("]")]
    choices = [w[1:-1] if w.startswith("[") and w.endswith("]") else w for w in words_]
    if len(active) == 1:
        return active[0], choices
    if not active and len(choices) == 1:
        return choices[0], choices
    if not choices:
        return None, []
    raise InputError(f"expected one [bracketed] choice, found {text[:60]!r}", path=path)
