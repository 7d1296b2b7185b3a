"""Reading a worker's HTTP reply in the daemon with a size cap and an overall deadline.

The worker runs unprivileged and may be compromised; the daemon runs as root. A reply it reads whole (/metrics,
/slots, the torch worker's /control) is read raw (no gzip decoding: no decompression bomb), at most `limit` bytes,
and within `deadline_s` in all (httpx's timeouts are per read: a body trickled a byte at a time never trips them).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from agent.errors import InputError


def read_reply(client: httpx.Client, method: str, url: str, limit: int, deadline_s: float,
               **kwargs: Any) -> tuple[int, bytes]:
    """(status, body); InputError when the body passes `limit` bytes or `deadline_s` seconds."""
    deadline = time.monotonic() + deadline_s
    headers = {**kwargs.pop("headers", {}), "accept-encoding": "identity"}
    with client.stream(method, url, headers=headers, **kwargs) as r:
        body = bytearray()
        for chunk in r.iter_raw():
            body += chunk
            if len(body) > limit:
                raise InputError(f"{urlsplit(url).path} reply larger than {limit} bytes")
            if time.monotonic() > deadline:
                raise InputError(f"{urlsplit(url).path} reply not complete within {deadline_s:g} s")
        return r.status_code, bytes(body)
