"""Shapes of policy strings that reach kernel files, udev rules or a worker's command line.

Checked when the policy is validated, so a bad value is refused on every host with the policy's file:line, before
any tuner decides that a setting is "not applicable" here (a governor with a newline must not pass on a host
without cpufreq and fail only on one with it). The tuners then check values against what the host offers.

Every pattern is used with `fullmatch`: a `$` in a Python pattern also matches before a final newline.
"""

from __future__ import annotations

import re
from re import _parser as re_parser  # type: ignore[attr-defined]  # re.compile's own parser (not in typeshed)
from typing import Annotated, Any

from pydantic import AfterValidator

MAX_TOKEN_LEN = 64
MAX_PATTERN_LEN = 256

TOKEN_RE = re.compile(r"[A-Za-z0-9_.+\-]+")
# Globs on kernel device names; they may be written into a udev rule's KERNEL=="..." match.
DEVICE_GLOB_RE = re.compile(r"[A-Za-z0-9_*?\[\]\-.:!]+")
# Globs on GPU product names ("NVIDIA H100 80GB HBM3"): spaces and a few punctuation marks, never quotes.
NAME_GLOB_RE = re.compile(r"[A-Za-z0-9 _*?\[\]\-.:!+()/,]+")


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def token(value: str) -> str:
    """One word such as a governor, an EPP, an I/O scheduler, a device kind, a cache type or a GPU UUID."""
    if len(value) > MAX_TOKEN_LEN or not TOKEN_RE.fullmatch(value):
        raise ValueError(f"must be one word of ASCII letters, digits and _.+- (at most {MAX_TOKEN_LEN} "
                         f"characters), got {_shown(value)}")
    return value


def device_glob(value: str) -> str:
    if len(value) > MAX_TOKEN_LEN or not DEVICE_GLOB_RE.fullmatch(value):
        raise ValueError(f"must be a device name glob of ASCII letters, digits and _-.:*?[]! (at most "
                         f"{MAX_TOKEN_LEN} characters), got {_shown(value)}")
    return value


def name_glob(value: str) -> str:
    if len(value) > MAX_PATTERN_LEN or not NAME_GLOB_RE.fullmatch(value):
        raise ValueError(f"must be a name glob of ASCII letters, digits, spaces and _-.:*?[]!+()/, (at most "
                         f"{MAX_PATTERN_LEN} characters), got {_shown(value)}")
    return value


def _nested_repeat(items: Any, under_repeat: bool = False) -> bool:
    """Whether a parsed pattern repeats something that itself repeats or branches (`(a+)+`, `(.*)*`, `(a|aa)*`):
    the shapes whose backtracking grows exponentially with the subject's length. Iterative, so deep nesting of
    groups cannot overflow the stack."""
    stack: list[tuple[Any, bool]] = [(items, under_repeat)]
    while stack:
        seq, repeated = stack.pop()
        for op, arg in seq:
            name = str(op)
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                _lo, hi, sub = arg
                if repeated:
                    return True
                stack.append((sub, hi is not None and hi > 1))
            elif name == "BRANCH":
                if repeated:
                    return True
                stack.extend((branch, repeated) for branch in arg[1])
            elif name == "ATOMIC_GROUP":
                stack.append((arg, repeated))
            elif name in ("SUBPATTERN", "ASSERT", "ASSERT_NOT"):
                stack.append((arg[-1], repeated))
            elif name == "GROUPREF_EXISTS":
                stack.extend((branch, repeated) for branch in arg[1:] if branch is not None)
    return False


def model_regex(value: str) -> str:
    """A regular expression on a device model: one line of printable ASCII, bounded, compiling, and without
    nested repetition. The pattern is matched in the daemon against host strings (a 40-character model and
    `^(.*?)*$x` take hours), so a body that could hang a thread is refused here."""
    if len(value) > MAX_PATTERN_LEN or not (value.isascii() and value.isprintable()):
        raise ValueError(f"must be one line of printable ASCII (at most {MAX_PATTERN_LEN} characters), "
                         f"got {_shown(value)}")
    try:
        parsed = re_parser.parse(value)
    except (re.error, RecursionError) as e:
        raise ValueError(f"invalid regular expression: {e}") from None
    if _nested_repeat(list(parsed)):
        raise ValueError(f"a repetition of a group that repeats or branches (such as (a+)+ or (a|b)*) can take "
                         f"exponential time: write it without nesting, got {_shown(value)}")
    return value


Token = Annotated[str, AfterValidator(token)]
DeviceGlob = Annotated[str, AfterValidator(device_glob)]
NameGlob = Annotated[str, AfterValidator(name_glob)]
ModelRegex = Annotated[str, AfterValidator(model_regex)]
