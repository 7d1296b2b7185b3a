"""Boot the cached Debian rootfs under systemd-nspawn so the daemon runs under a real systemd (PID 1).

How, and why each part:
- The cache (scripts/build-rootfs.sh, ~/.cache/hosttune/rootfs/<key>/) stays clean: each container boots an
  overlay (lower = the cache, upper/work = the test's tmp dir). Files the test wants inside (the unit, a config,
  drop-ins) are written into the upper dir before boot.
- The overlay and a tmpfs on /run/systemd/nspawn are mounted inside `unshare --mount --propagation private`, so
  they vanish with the container and nothing leaks into the host's mount table.
- The launcher moves itself into its own cgroup (in the name=systemd and unified hierarchies) before exec'ing
  nspawn: nspawn creates its payload/supervisor groups under the cgroup it starts in, so two containers (or another
  harness's) never share them, and teardown removes exactly the tree this container created.
- /proc/sys and /sys stay read-only in the container (SYSTEMD_NSPAWN_API_VFS_WRITABLE is removed from the
  environment): a container's systemd would otherwise rewrite the shared kernel's sysctls. --private-network gives
  the container its own network namespace, where net.* sysctls are its own.
- The repo (with its .venv) and the interpreter the venv points at are bound read-only at the same paths, so the
  daemon in the container runs this working tree's code.
- Commands run inside with `nsenter --target <container PID 1> --all`.

Run by hand: `python tests/e2e/nspawn.py shell` boots a container and prints how to enter it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_HIERARCHIES = ("systemd", "unified")
NAME_PREFIX = "htsd"


def cached_rootfs() -> Path | None:
    """The complete cached rootfs, or None (scripts/build-rootfs.sh prints its path; it is a no-op when built)."""
    cache = Path(os.environ.get("HOSTTUNE_CACHE", Path.home() / ".cache/hosttune"))
    for candidate in sorted(cache.glob("rootfs/*/.hosttune-rootfs-complete")):
        return candidate.parent
    return None


def python_home() -> Path:
    """The installation the venv's interpreter belongs to (a pyenv or system Python), to bind into the container."""
    real = Path(sys.executable).resolve()
    return real.parent.parent


def remove_cgroup(name: str) -> None:
    """rmdir the cgroup tree `name` in each hierarchy, leaves first; a group still holding processes stays."""
    for hierarchy in CGROUP_HIERARCHIES:
        top = CGROUP_ROOT / hierarchy / name
        if not top.is_dir():
            continue
        subdirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*subdirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()


def _ns_pid_chain(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def _children(pid: int) -> list[int]:
    out: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    with contextlib.suppress(OSError):
        for task in task_dir.iterdir():
            with contextlib.suppress(OSError):
                out.extend(int(x) for x in (task / "children").read_text().split())
    return out


class Container:
    """One booted container. Use as a context manager; `run()` executes a command inside."""

    def __init__(self, rootfs: Path, workdir: Path, *, binds_ro: Sequence[Path] = ()) -> None:
        self.rootfs = rootfs
        self.workdir = workdir
        self.upper = workdir / "upper"
        self.binds_ro = [REPO, python_home(), *binds_ro]
        self.name = f"{NAME_PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.cgroup = self.name
        self.process: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.console_log = workdir / "console.log"
        for d in ("upper", "work", "merged"):
            (workdir / d).mkdir(parents=True, exist_ok=True)

    # -- files inside, before boot -------------------------------------------------------------------------------
    def write(self, path: str, text: str, mode: int = 0o644) -> Path:
        dest = self.upper / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        os.chmod(dest, mode)
        return dest

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> None:
        argv = ["unshare", "--mount", "--propagation", "private", sys.executable, str(Path(__file__).resolve()),
                "boot", "--rootfs", str(self.rootfs), "--workdir", str(self.workdir), "--cgroup", self.cgroup,
                "--machine", self.name, *[f"--bind-ro={p}" for p in self.binds_ro]]
        env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_NSPAWN_API_VFS_WRITABLE"}
        with open(self.console_log, "wb") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            self.leader = self._find_leader(deadline)
            # Wait until boot finished (running, or degraded: some unit of the minimal image may fail).
            while time.monotonic() < deadline:
                state = self.run(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()
                if state in ("running", "degraded"):
                    return
                time.sleep(0.1)
            raise TimeoutError(f"container did not finish booting in {timeout_s:.0f} s: {self.console()}")
        except BaseException:
            self.stop()
            raise

    def _find_leader(self, deadline: float) -> int:
        """The container's PID 1 (systemd): the descendant of nspawn that is PID 1 in its own PID namespace."""
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.process.returncode}: {self.console()}")
            todo = [self.process.pid]
            while todo:
                pid = todo.pop()
                chain = _ns_pid_chain(pid)
                if len(chain) > 1 and chain[-1] == 1:
                    return pid
                todo.extend(_children(pid))
            time.sleep(0.05)
        raise TimeoutError(f"container PID 1 did not appear: {self.console()}")

    def console(self) -> str:
        with contextlib.suppress(OSError):
            return self.console_log.read_text(errors="replace")[-3000:]
        return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own nspawn, by PID
                proc.wait(timeout=10)
        self.process = None
        self.leader = None
        remove_cgroup(self.cgroup)

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inside ----------------------------------------------------------------------------------------------------
    def nsenter(self, argv: Sequence[str], *, namespaces: Sequence[str] = ("--all",)) -> list[str]:
        if self.leader is None:
            raise RuntimeError("container is not running")
        return ["nsenter", "--target", str(self.leader), *namespaces, "--", *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
            namespaces: Sequence[str] = ("--all",)) -> subprocess.CompletedProcess[str]:
        """Run a command in the container (all namespaces: its root, PID 1, network, cgroup)."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        proc = subprocess.run(self.nsenter(argv, namespaces=namespaces), capture_output=True, text=True,
                              timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def in_netns(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a HOST command inside the container's network namespace only (to reach its loopback API)."""
        return subprocess.run(self.nsenter(argv, namespaces=("--net",)), capture_output=True, text=True,
                              timeout=timeout)


# ---- the launcher: runs inside `unshare --mount --propagation private`, then becomes systemd-nspawn --------------
def _check(argv: list[str]) -> None:
    subprocess.run(argv, check=True, timeout=30)


def _boot_main(args: Sequence[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="nspawn.py boot")
    p.add_argument("--rootfs", required=True, type=Path)
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--cgroup", required=True)
    p.add_argument("--machine", required=True)
    p.add_argument("--bind-ro", action="append", default=[])
    a = p.parse_args(args)
    for hierarchy in CGROUP_HIERARCHIES:
        group = CGROUP_ROOT / hierarchy / a.cgroup
        group.mkdir(exist_ok=True)
        (group / "cgroup.procs").write_text(str(os.getpid()))
    merged = a.workdir / "merged"
    _check(["mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={a.rootfs},upperdir={a.workdir / 'upper'},workdir={a.workdir / 'work'}", str(merged)])
    Path("/run/systemd/nspawn").mkdir(parents=True, exist_ok=True)
    _check(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run/systemd/nspawn"])
    os.environ.pop("SYSTEMD_NSPAWN_API_VFS_WRITABLE", None)
    os.execvp("systemd-nspawn", [
        "systemd-nspawn", "--quiet", "-D", str(merged), "--boot", "--register=no", "--keep-unit",
        f"--machine={a.machine}", "--private-network", "--console=pipe", "--link-journal=no",
        *[f"--bind-ro={path}" for path in a.bind_ro]])


def _shell_main() -> None:
    import tempfile

    rootfs = cached_rootfs()
    if rootfs is None:
        sys.exit("no cached rootfs: run scripts/build-rootfs.sh")
    with tempfile.TemporaryDirectory(prefix="htsd-") as tmp, Container(rootfs, Path(tmp)) as c:
        print("enter with:", " ".join(c.nsenter(["bash"])), "\nCtrl-C stops the container.")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "boot":
        _boot_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "shell":
        _shell_main()
    else:
        sys.exit("usage: nspawn.py shell | nspawn.py boot ...")
