"""The policy expression language: arithmetic, units, functions, conditions, and what it must refuse."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.policy import expr
from agent.policy.expr import ExprError
from agent.policy.namespace import FactNamespace

FACTS: dict[str, Any] = {
    "cpu": {"cores": 12, "sockets": 2, "vendor": "GenuineIntel", "flags": ["avx2", "avx512f"], "model": None},
    "model": {"size_bytes": 98_362_432, "path": "/models/m.gguf"},
    "gpus": [{"name": "H100"}, {"name": "H100"}],
    "sysctl": {"vm.swappiness": "60"},
}


NS = FactNamespace(None, context=FACTS)  # the real name resolution, fed plain data instead of host facts


def ev(text: str) -> Any:
    tree = expr.parse(text)
    for name in expr.names(tree):
        NS.check(name)
    return expr.evaluate(tree, NS.lookup)


@pytest.mark.parametrize(("text", "expected"), [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("7 // 2", 3),
    ("7 / 2", 3.5),
    ("7 % 4", 3),
    ("-2 ** 2", -4),
    ("2 ** 3 ** 2", 512),
    ("2 ** -1", 0.5),
    ("cpu.cores // cpu.sockets", 6),
    ("2Mi", 2 * 1024 * 1024),
    ("1Ki + 1", 1025),
    ("1.5Gi", 1_610_612_736),
    ("3Ti", 3 << 40),
    ("1e3", 1000.0),
])
def test_arithmetic_and_units(text: str, expected: Any) -> None:
    assert ev(text) == expected


def test_hugepages_from_model_size_matches_manual_arithmetic() -> None:
    size = FACTS["model"]["size_bytes"]
    pages = -(-size * 11 // (10 * 2 * 1024 * 1024))  # integer ceil(size / 2 MiB * 1.1), no floats
    assert ev("ceil(model.size_bytes / 2Mi * 1.1)") == pages == 52


@pytest.mark.parametrize(("text", "expected"), [
    ("ceil(2.1)", 3), ("floor(2.9)", 2), ("round(2.5)", 2), ("round(2.675, 2)", 2.67), ("int(7.9)", 7),
    ("int(sysctl.vm.swappiness) + 1", 61), ("min(3, 1, 2)", 1), ("max([4, 9, 2])", 9), ("abs(-3)", 3),
    ("max(cpu.cores, 64)", 64),
])
def test_functions(text: str, expected: Any) -> None:
    assert ev(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("gpus.count > 0", True),
    ("gpus.count > 0 and cpu.cores >= 16", False),
    ("gpus.count > 0 or cpu.cores >= 16", True),
    ("not gpus.count == 2", False),
    ('cpu.vendor == "GenuineIntel"', True),
    ("cpu.vendor != 'AuthenticAMD'", True),
    ('"avx512f" in cpu.flags', True),
    ('"amx" not in cpu.flags', True),
    ('"Intel" in cpu.vendor', True),
    ("cpu.vendor in ['GenuineIntel', 'AuthenticAMD']", True),
    ("64 if gpus.count > 0 else 0", 64),
    ("true == 1", False),  # booleans are not numbers
    ("cpu.model == null", True),
    ("cpu.model > 3", False),  # an unknown fact satisfies no ordering
    ("sysctl.vm.swappiness == '60'", True),
])
def test_conditions(text: str, expected: Any) -> None:
    assert ev(text) == expected


def test_and_or_short_circuit_skips_the_right_side() -> None:
    # The right side would be an error (division by zero) if it were evaluated.
    assert ev("gpus.count > 5 and 1 // 0 > 1") is False
    assert ev("gpus.count > 0 or 1 // 0 > 1") is True


@pytest.mark.parametrize(("text", "message"), [
    ("__import__('os')", "unknown function '__import__'"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("cpu.__class__", "starting with '_'"),
    ("cpu._x", "starting with '_'"),
    ("(1).real", "unexpected"),
    ("cpu.cores()", "unknown function 'cpu.cores'"),
    ("lambda: 1", "unexpected"),
    ("[x for x in cpu.flags]", "expected"),
    ("2 ** 100000", "too large"),
    ("10 ** 10 ** 10", "too large"),
    ("2.0 ** 5000", "out of range"),
    ("1e400", "out of range"),
    ("(-8) ** 0.5", "not a real number"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("'a' * 1000", "needs numbers"),
    ("true + 1", "needs numbers"),
    ("cpu.model + 1", "unknown on this host"),
    ("1 < 2 < 3", "chained comparisons"),
    ("1 <", "expected a value"),
    ("", "empty expression"),
    ("2Xi", "units are Ki, Mi, Gi, Ti"),
    ("1 ; 2", "unexpected character"),
    ("ceil(1, 2)", "takes 1 argument"),
    ("min()", "at least one value"),
    ("int('x')", "cannot read"),
    ("gpus.count and true", "needs true or false"),
    ("'a' < 1", "cannot compare"),
    ("1 in 5", "needs a list or a string"),
    ("(" * 40 + "1" + ")" * 40, "nested more than"),
    ("-" * 60 + "1", "nested more than"),
    ("1" + " + 1" * 400, "longer than"),
])
def test_rejected(text: str, message: str) -> None:
    with pytest.raises(ExprError) as e:
        ev(text)
    assert message in str(e.value)


def test_error_has_column() -> None:
    with pytest.raises(ExprError) as e:
        ev("1 + $")
    assert e.value.column == 5


def test_names_lists_every_name() -> None:
    tree = expr.parse("ceil(model.size_bytes / 2Mi) if gpus.count > 0 and 'x' in cpu.flags else numa.node0.cores")
    assert sorted(n.dotted for n in expr.names(tree)) == ["cpu.flags", "gpus.count", "model.size_bytes",
                                                          "numa.node0.cores"]


ALPHABET = st.sampled_from([*"0123456789 +-*/%()[],.<>=!'\"_abcdefghijklmnopqrstuvwxyzKMGTi",
                            "**", "//", " and ", " or ", " not ", " in ", " if ", " else ", "ceil(", "min(",
                            "cpu.cores", "gpus.count", "model.size_bytes", "2Mi", "true", "null", "__class__"])


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join))
def test_random_expressions_only_raise_expr_error(text: str) -> None:
    try:
        result = ev(text)
    except ExprError:
        return
    if isinstance(result, float):
        assert math.isfinite(result)
    if isinstance(result, int) and not isinstance(result, bool):
        assert result.bit_length() <= expr.MAX_INT_BITS + 1
