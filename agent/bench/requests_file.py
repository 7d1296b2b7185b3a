"""`hosttune bench --requests FILE.jsonl`: users' own traffic, one JSON object per line (docs/bench.md).

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}], "max_tokens": 64,
     "session": "conv-17", "at_s": 0.25}
    {"prompt": "Summarise ...", "max_tokens": 128}

`messages` or `prompt` (exactly one), `max_tokens` (required), `session` (optional: sent as X-Session-Id),
`at_s` (optional: arrival offset in seconds for open-loop replay; all lines or none). The file is hostile input:
its size, line count, line length, every key, type and range are checked, and any fault is one InputError naming
the file, the line and the key, raised before anything is sent.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from agent.bench.corpus import BenchRequest
from agent.errors import InputError
from agent.fsio import read_capped

MAX_FILE_BYTES = 64 << 20
MAX_LINES = 100_000
MAX_LINE_BYTES = 1 << 20
MAX_MESSAGES = 256
MAX_TOKENS = 32768
MAX_AT_S = 7 * 86400.0
KEYS = {"messages", "prompt", "max_tokens", "session", "at_s"}
ROLES = {"system", "user", "assistant"}
# it goes into an HTTP header: no spaces, no control characters (CR/LF would split the header)
SESSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
FLAG = "--requests"


@dataclass(frozen=True)
class FileReplay:
    path: Path
    requests: list[BenchRequest]
    at_s: list[float] | None          # per request, in file order; None when the file has no arrival times

    @property
    def timed(self) -> bool:
        return self.at_s is not None

    def timeline(self) -> list[tuple[float, BenchRequest]]:
        """(offset, request) in arrival order (a stable sort: equal offsets keep file order)."""
        if self.at_s is None:
            raise ValueError(f"{self.path} has no at_s arrival times")
        return sorted(zip(self.at_s, self.requests, strict=True), key=lambda pair: pair[0])

    def source(self) -> InOrder:
        return InOrder(self.requests)


class InOrder:
    """The file's requests in order, one per draw (a loop's Bounds stops it at the last one)."""

    def __init__(self, requests: list[BenchRequest]) -> None:
        self.requests = requests
        self.next = 0

    def draw(self, rng: random.Random) -> BenchRequest:
        if self.next >= len(self.requests):
            raise IndexError("every request of the file was sent")
        req = self.requests[self.next]
        self.next += 1
        return req


def _error(path: Path, line: int | None, message: str, key: str | None = None) -> InputError:
    """Printed as 'FILE:LINE: --requests: KEY: message'."""
    return InputError(f"{key}: {message}" if key else message, path=path, line=line, field=FLAG)


def load_requests(path: Path) -> FileReplay:
    """Parse and check the whole file; nothing is sent before it is known good."""
    try:
        data = read_capped(path, MAX_FILE_BYTES)
    except InputError as e:
        raise _error(path, None, e.message) from None
    except OSError as e:
        raise _error(path, None, f"cannot read: {e.strerror or e}") from None
    lines = data.split(b"\n")
    if len(lines) > MAX_LINES + 1 or (len(lines) == MAX_LINES + 1 and lines[-1].strip()):
        raise _error(path, None, f"more than {MAX_LINES} lines")
    requests: list[BenchRequest] = []
    offsets: list[float | None] = []
    first_timed: bool | None = None
    for number, raw in enumerate(lines, start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise _error(path, number, f"line is longer than {MAX_LINE_BYTES} bytes")
        if not raw.strip():
            continue
        req, at_s = parse_line(path, number, raw)
        if first_timed is None:
            first_timed = at_s is not None
        elif first_timed != (at_s is not None):
            raise _error(path, number, "give at_s on every line or on none", "at_s")
        requests.append(req)
        offsets.append(at_s)
    if not requests:
        raise _error(path, None, "no requests in the file")
    at_s_list = [a for a in offsets if a is not None] if first_timed else None
    return FileReplay(path, requests, at_s_list)


def parse_line(path: Path, number: int, raw: bytes) -> tuple[BenchRequest, float | None]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _error(path, number, "not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise _error(path, number, f"not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(obj, dict):
        raise _error(path, number, f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - KEYS)
    if unknown:
        raise _error(path, number, f"unknown key {unknown[0][:40]!r} (known: {', '.join(sorted(KEYS))})")
    if ("messages" in obj) == ("prompt" in obj):
        raise _error(path, number, "give exactly one of `messages` or `prompt`")
    max_tokens = obj.get("max_tokens")
    if not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS:
        raise _error(path, number, f"an integer from 1 to {MAX_TOKENS} is required", "max_tokens")
    session = obj.get("session")
    if session is not None and (not isinstance(session, str) or not SESSION_RE.fullmatch(session)):
        raise _error(path, number, "1-128 characters of letters, digits and ._:@/+=- (it is sent as a header)",
                     "session")
    at_s = obj.get("at_s")
    if at_s is not None:
        if not _is_number(at_s) or not math.isfinite(at_s) or not 0 <= at_s <= MAX_AT_S:
            raise _error(path, number, f"a number of seconds from 0 to {MAX_AT_S:g} is required", "at_s")
        at_s = float(at_s)
    if "prompt" in obj:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise _error(path, number, "a non-empty string is required", "prompt")
        return BenchRequest("file", None, prompt, max_tokens, session=session), at_s
    messages = _messages(path, number, obj["messages"])
    system = next((content for role, content in messages if role == "system"), None)
    last_user = next((content for role, content in reversed(messages) if role == "user"), "")
    return BenchRequest("file", system, last_user, max_tokens, messages=messages, session=session), at_s


def _messages(path: Path, number: int, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MESSAGES:
        raise _error(path, number, f"a list of 1 to {MAX_MESSAGES} messages is required", "messages")
    out: list[tuple[str, str]] = []
    for i, m in enumerate(value):
        key = f"messages[{i}]"
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise _error(path, number, 'expected {"role": ..., "content": ...}', key)
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or role not in ROLES:
            raise _error(path, number, f"role must be one of {', '.join(sorted(ROLES))}", f"{key}.role")
        if not isinstance(content, str):
            raise _error(path, number, "content must be a string", f"{key}.content")
        out.append((role, content))
    if not any(role == "user" for role, _ in out):
        raise _error(path, number, "no user message", "messages")
    return tuple(out)


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)
