"""Least privilege for the worker: who it runs as, and the environment it gets.

The daemon is root; the worker (llama-server, the torch worker, any `command`) parses untrusted prompts and
model files, so it runs as an unprivileged user with no capabilities and an allow-listed environment:

- the user is the daemon config's `worker.user` (default `hosttune-worker`, created by the package's
  sysusers.d file, the unit and the Ansible role). A dev machine without it (`make run` as root) falls back to
  `nobody` with a warning; a configured user that does not exist is an error naming `worker.user`. Only an
  explicit `worker.user: root` keeps a root worker (logged as a warning: for dev machines whose Python lives
  under /root, where no other user can run it). A daemon that is not root runs the worker as itself.
- the exec shim (agent.worker.bindexec) does the switch after binding CPUs and memory: no_new_privs, ambient and
  (when it may) bounding capability sets cleared, supplementary groups dropped, setresgid/setresuid. A uid change
  away from 0 clears the permitted and effective sets. Resource limits the unit set (LimitMEMLOCK) are kept.
- the environment holds only the keys below (from the daemon's own environment) plus what the engine sets: never
  the token path, HOSTTUNE_*, credentials or proxies the daemon happens to carry.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.errors import InputError

log = logging.getLogger("hosttune.worker")

DEFAULT_WORKER_USER = "hosttune-worker"
FALLBACK_USER = "nobody"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Passed through from the daemon's environment when set. PYTHONPATH: the exec shim and the torch worker import
# this package (a dev checkout is not installed). The CUDA/HF keys steer device choice and offline mode.
ENV_KEYS = frozenset({"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH", "PYTHONPATH",
                      "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"})
ENV_PREFIXES = ("OMP_", "GOMP_")  # OpenMP thread/affinity settings llama.cpp's ggml and PyTorch honour


@dataclass(frozen=True)
class RunAs:
    """The unprivileged identity a worker process runs as."""

    user: str
    uid: int
    gid: int

    def shim_args(self) -> list[str]:
        return ["--uid", str(self.uid), "--gid", str(self.gid)]


def resolve_run_as(user: str = DEFAULT_WORKER_USER) -> RunAs | None:
    """The identity for `user`, or None when this process is not root (there is nothing to drop then) or the
    configuration explicitly says root."""
    if os.geteuid() != 0:
        return None
    if user == "root":
        log.warning("worker.user is root: the worker runs with the daemon's privileges (no drop)")
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        if user != DEFAULT_WORKER_USER:
            raise InputError(f"user {user!r} does not exist on this host", field="worker.user") from None
        log.warning("user %s does not exist (install the package's sysusers.d file or run the Ansible role); "
                    "the worker runs as %s", user, FALLBACK_USER)
        entry = pwd.getpwnam(FALLBACK_USER)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise InputError(f"user {user!r} is root or in group root: the worker must run unprivileged",
                         field="worker.user")
    return RunAs(user=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def worker_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The allow-listed part of `base` (default: our environment), plus `extra` (what the engine sets)."""
    src = os.environ if base is None else base
    env = {k: v for k, v in src.items() if k in ENV_KEYS or k.startswith(ENV_PREFIXES)}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra)
    return env


def check_launch(argv: list[str], prefix_len: int, env: Mapping[str, str], run_as: RunAs | None) -> None:
    """Refuse a worker program the worker user cannot execute (a clear error, not a crash loop of exit 127)."""
    if run_as is None or len(argv) <= prefix_len:
        return
    program = argv[prefix_len]
    found = program if "/" in program else shutil.which(program, path=env.get("PATH", DEFAULT_PATH))
    if found is not None and Path(found).exists():
        check_readable(Path(found), run_as, field="worker", need=stat.S_IXOTH, what="run")


def check_readable(path: Path, run_as: RunAs | None, field: str = "worker.model", need: int = stat.S_IROTH,
                   what: str = "read") -> None:
    """Refuse, before any start, a model the worker user cannot read (or reach): a clear error naming
    worker.model instead of a crash loop of 'failed to open' from the engine."""
    if run_as is None:
        return
    target = path.resolve()
    for part, bit in [*((d, stat.S_IXOTH) for d in reversed(target.parents)), (target, need)]:
        try:
            st = part.stat()
        except OSError as e:
            raise InputError(f"cannot stat {part}: {e.strerror}", field=field) from None
        if st.st_uid == run_as.uid:
            ok = st.st_mode & (bit << 6)
        elif st.st_gid == run_as.gid:
            ok = st.st_mode & (bit << 3)
        else:
            ok = st.st_mode & bit
        if not ok:
            verb = what if part == target else "enter"
            raise InputError(f"the worker runs as {run_as.user} (uid {run_as.uid}) and cannot {verb} {part} "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}): make it accessible "
                             "to that user (chmod o+rx, or chgrp to its group), or set worker.user", field=field)
