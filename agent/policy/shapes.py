"""Shapes of policy strings that reach kernel files, udev rules or a worker's command line.

Checked when the policy is validated, so a bad value is refused on every host with the policy's file:line, before
any tuner decides that a setting is "not applicable" here (a governor with a newline must not pass on a host
without cpufreq and fail only on one with it). The tuners then check values against what the host offers.

Every pattern is used with `fullmatch`: a `$` in a Python pattern also matches before a final newline.
"""

from __future__ import annotations

import re
from typing import Annotated

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


def printable_pattern(value: str) -> str:
    """A regular expression: one line of printable ASCII, bounded (it is matched, never written anywhere)."""
    if len(value) > MAX_PATTERN_LEN or not (value.isascii() and value.isprintable()):
        raise ValueError(f"must be one line of printable ASCII (at most {MAX_PATTERN_LEN} characters), "
                         f"got {_shown(value)}")
    return value


Token = Annotated[str, AfterValidator(token)]
DeviceGlob = Annotated[str, AfterValidator(device_glob)]
NameGlob = Annotated[str, AfterValidator(name_glob)]
PrintablePattern = Annotated[str, AfterValidator(printable_pattern)]
