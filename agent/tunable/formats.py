"""How a host file shows a value, and how a plain-file tree should show it after a write.

Three shapes cover every OS tunable hosttune writes:
  scalar  one value, possibly several whitespace-separated fields ("60\n", "32768\t60999\n")
  choice  sysfs choice lists with the active one bracketed ("always [madvise] never\n")
  text    a regular file written whole (a udev rule)

`parse` turns the raw file into the value compared with policies. `render` answers "what would the kernel show
after writing VALUE over RAW"; the writer uses it only for plain-file trees (fixture or captured hosts), which
cannot compute that themselves, so an apply/revert cycle on such a tree reads back exactly as on a real kernel.
"""

from __future__ import annotations

import re
from typing import Literal

Format = Literal["scalar", "choice", "text"]


def normalize(value: str) -> str:
    """Whitespace-normalised form: multi-value sysctls compare equal whatever the separators."""
    return " ".join(value.split())


def parse(fmt: Format, raw: str | None) -> str | None:
    if raw is None:
        return None
    if fmt == "text":
        return raw
    if fmt == "choice":
        match = re.search(r"\[([^\]]+)\]", raw)
        return match.group(1) if match else None
    return normalize(raw)


def choices(raw: str | None) -> list[str]:
    """Every choice a sysfs choice file offers, the active one included."""
    if raw is None:
        return []
    return [w.strip("[]") for w in raw.split()]


def render(fmt: Format, raw: str | None, value: str) -> str:
    if fmt == "text":
        return value
    if fmt == "choice":
        plain = re.sub(r"\[([^\]]+)\]", r"\1", raw or "")
        # word boundaries that treat "defer+madvise" as one word, so "defer" never matches inside it
        pattern = rf"(?<![\w+\-]){re.escape(value)}(?![\w+\-])"
        rendered, count = re.subn(pattern, f"[{value}]", plain, count=1)
        return rendered if count else plain
    return "\t".join(value.split()) + "\n"


def restore_value(fmt: Format, original_raw: str) -> str:
    """What to write to a live kernel file so that it reads back `original_raw` (the bracketed choice of a
    choice file, the stripped value of a scalar, the whole content of a text file)."""
    if fmt == "choice":
        return parse("choice", original_raw) or original_raw.strip()
    if fmt == "text":
        return original_raw
    return original_raw.strip()
