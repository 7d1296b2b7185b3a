"""The API token file: created 0600 on first start, refused when others could read it. The scrape token file
(`api.metrics_token_file`, the read-only credential for /metrics) gets the same checks but is never created, and
is refused when it holds the API token (a scraper's copy would then retune the host).

Why a file and not a config value: the token must never sit in a world-readable config or in the unit's
environment (`systemctl show` prints it). The daemon refuses to start when the file is readable or writable by
group or others, not a regular file, owned by someone else, or too short — a leaked token can retune the host as
root. No FastAPI here: the daemon checks the token before it imports the web stack.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from agent.errors import InputError
from agent.fsio import read_capped

MIN_TOKEN_CHARS = 16
TOKEN_MAX_BYTES = 4096


def read_token(path: Path, what: str = "API token") -> str:
    """The token in an existing token file, refused unless it is a 0600 regular file of ours holding at least
    MIN_TOKEN_CHARS characters (`what` names the file in the error)."""
    try:
        st = path.lstat()
    except OSError as e:
        raise InputError(f"cannot read the {what} file: {e.strerror}", path=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"the {what} file is not a regular file (a symlink or device is refused)", path=path)
    if st.st_mode & 0o077:
        raise InputError(f"the {what} file is readable or writable by group/others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); refusing to start: chmod 600 it", path=path)
    if st.st_uid != os.geteuid():
        raise InputError(f"the {what} file is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})",
                         path=path)
    token = read_capped(path, TOKEN_MAX_BYTES).decode(errors="replace").strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise InputError(f"the {what} is shorter than {MIN_TOKEN_CHARS} characters", path=path)
    return token


def ensure_token(path: Path) -> str:
    """Return the API token, creating the file (0600, random 256-bit token) if it does not exist yet."""
    if path.exists() or path.is_symlink():
        return read_token(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return read_token(path)  # another process created it between our checks
    except OSError as e:
        raise InputError(f"cannot create the API token file: {e.strerror}", path=path) from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return token


def read_metrics_token(path: Path | None, api_token: str) -> str | None:
    """The scrape token (None: no `api.metrics_token_file`), refused when it equals the API token: Prometheus
    servers keep the scrape token in their own files, and the API token can retune the host as root."""
    if path is None:
        return None
    token = read_token(path, what="metrics (scrape) token")
    if hmac.compare_digest(token.encode(), api_token.encode()):
        raise InputError("the metrics (scrape) token file holds the API token: give /metrics its own token "
                         "(api.metrics_token_file)", path=path)
    return token
