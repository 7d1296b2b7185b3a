"""A fleet of real test hosts on one machine, for the Ansible tier.

Each host is a systemd-nspawn container booting a Debian rootfs (systemd as PID 1, sshd, python3) on its own
writable overlay, inside its own network namespace. A controller namespace holds a bridge; every veth pair is
created from inside it, so the only addresses (198.18.0.0/24, the benchmarking range) live on veths in namespaces
this harness made, and no traffic leaves them. Ansible runs inside the controller namespace and reaches the hosts
over real SSH.

Why nspawn rather than bare sshd in a namespace: the role installs, enables and starts a Type=notify systemd unit,
and that only means something under a real systemd.

Safety rules this harness keeps (all hosts share the machine's one kernel):
- containers never get writable /proc/sys or /sys; only /proc/sys/net is writable (it belongs to the host's own
  network namespace, so net.* sysctls are per host and never touch the real machine);
- each nspawn runs in its own cgroup (nspawn puts its payload/supervisor groups under the cgroup it starts in;
  two containers in one cgroup would share them) and in a private mount namespace that owns the overlay mount;
- teardown stops only the processes it started (by PID), removes its cgroups, namespaces (and with them the
  veths and the bridge) and unmounts /run/netns when it left it empty.

Run `python tests/e2e/fleet.py up ROOTFS` by hand to get a fleet for poking at (Ctrl-C tears it down).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NAME_PREFIX = "htfleet"
SUBNET = "198.18.0"
CONTROLLER_ADDR = f"{SUBNET}.1"
CGROUP_HIERARCHIES = ("systemd", "unified")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"


class FleetError(RuntimeError):
    pass


def _run(argv: Sequence[str], timeout: float = 30, check: bool = True,
         env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise FleetError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@dataclass
class FleetHost:
    name: str
    netns: str
    address: str
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    cgroup: str = ""

    @property
    def upper(self) -> Path:
        """The container's private writable layer: what it wrote, visible from outside for assertions."""
        return self.workdir / "upper"


@dataclass
class Fleet:
    rootfs: Path
    workdir: Path
    size: int = 3
    # Host paths shown read-only inside every container, (source on this machine, path in the container): the
    # engine and the model for hosts that run a real worker (tests/e2e/fleet_worker.py).
    binds: Sequence[tuple[Path, str]] = ()
    fleet_id: str = field(default_factory=lambda: f"{os.getpid()}{secrets.token_hex(2)}")
    hosts: list[FleetHost] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)  # bare namespaces on the bridge (add_client)
    key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.key = self.workdir / "id_ed25519"
        self.controller_ns = f"{NAME_PREFIX}-{self.fleet_id}-ctl"

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self, boot_timeout: float = 30) -> None:
        if not (self.rootfs / "usr/lib/systemd/systemd").exists():
            raise FleetError(f"{self.rootfs} is not a systemd rootfs")
        sweep_stale()
        self.workdir.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hosttune-fleet", "-f", str(self.key)])
        try:
            self._make_controller()
            for i in range(1, self.size + 1):
                host = FleetHost(name=f"h{i}", netns=f"{NAME_PREFIX}-{self.fleet_id}-h{i}",
                                 address=f"{SUBNET}.{10 + i}", workdir=self.workdir / f"h{i}")
                self.hosts.append(host)
                self._make_host_network(host)
                self._prepare_layer(host)
                self._boot(host)
            deadline = time.monotonic() + boot_timeout
            for host in self.hosts:
                self._wait_ssh(host, deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for host in self.hosts:
            proc = host.process
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
        for host in self.hosts:
            proc = host.process
            if proc is None:
                continue
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            remove_cgroup(host.cgroup)
        for netns in [*(h.netns for h in self.hosts), *self.clients]:
            _run(["ip", "netns", "delete", netns], check=False)
        _run(["ip", "netns", "delete", self.controller_ns], check=False)
        release_netns_dir()

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- network ---------------------------------------------------------------------------------------------
    def _ip(self, netns: str, *args: str) -> None:
        _run(["ip", "-n", netns, *args])

    def _make_controller(self) -> None:
        _run(["ip", "netns", "add", self.controller_ns])
        ns = self.controller_ns
        self._ip(ns, "link", "set", "lo", "up")
        self._ip(ns, "link", "add", "br0", "type", "bridge")
        self._ip(ns, "link", "set", "br0", "up")
        # The controller's own address sits on a veth too, not on the bridge.
        self._ip(ns, "link", "add", "ctl0", "type", "veth", "peer", "name", "ctl0-br")
        self._ip(ns, "link", "set", "ctl0-br", "master", "br0", "up")
        self._ip(ns, "addr", "add", f"{CONTROLLER_ADDR}/24", "dev", "ctl0")
        self._ip(ns, "link", "set", "ctl0", "up")

    def _make_host_network(self, host: FleetHost) -> None:
        _run(["ip", "netns", "add", host.netns])
        ctl = self.controller_ns
        self._ip(ctl, "link", "add", host.name, "type", "veth", "peer", "name", f"{host.name}-br")
        self._ip(ctl, "link", "set", f"{host.name}-br", "master", "br0", "up")
        self._ip(ctl, "link", "set", host.name, "netns", host.netns)
        self._ip(host.netns, "link", "set", host.name, "name", "eth0")
        self._ip(host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        self._ip(host.netns, "link", "set", "eth0", "up")
        self._ip(host.netns, "link", "set", "lo", "up")

    def add_client(self, name: str, address: str) -> str:
        """A bare network namespace on the bridge at `address` (no container): a second client besides the
        controller, e.g. one that is not among the hosts' allowed scrape sources. Returns its namespace name."""
        client = FleetHost(name=name, netns=f"{NAME_PREFIX}-{self.fleet_id}-{name}", address=address,
                           workdir=self.workdir / name)
        self.clients.append(client.netns)
        self._make_host_network(client)
        return client.netns

    # ---- containers ------------------------------------------------------------------------------------------
    def _prepare_layer(self, host: FleetHost) -> None:
        for sub in ("upper", "work", "merged"):
            (host.workdir / sub).mkdir(parents=True, exist_ok=True)
        ssh_dir = host.upper / "root/.ssh"
        ssh_dir.mkdir(parents=True, mode=0o700)
        (ssh_dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        etc = host.upper / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "hostname").write_text(host.name + "\n")
        (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {host.name}\n")

    def _boot(self, host: FleetHost) -> None:
        host.cgroup = f"{NAME_PREFIX}-{self.fleet_id}-{host.name}"
        argv = ["unshare", "--mount", "--propagation", "private", sys.executable, str(Path(__file__).resolve()),
                "boot", "--name", host.name, "--netns", host.netns, "--lower", str(self.rootfs),
                "--workdir", str(host.workdir), "--cgroup", host.cgroup]
        for source, target in self.binds:
            argv += ["--bind-ro", f"{source}:{target}"]
        log = open(host.workdir / "console.log", "wb")  # noqa: SIM115 - owned by the child for its lifetime
        with log:
            host.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def _wait_ssh(self, host: FleetHost, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            if host.process is not None and host.process.poll() is not None:
                raise FleetError(f"{host.name} exited during boot:\n{self.console(host)[-2000:]}")
            proc = self.ssh(host, ["true"], timeout=5, check=False)
            if proc.returncode == 0:
                return
            last = proc.stderr.strip()
            time.sleep(0.2)
        raise FleetError(f"{host.name}: sshd did not answer in time ({last})\n{self.console(host)[-2000:]}")

    def console(self, host: FleetHost) -> str:
        return (host.workdir / "console.log").read_text(errors="replace")

    # ---- talking to hosts ------------------------------------------------------------------------------------
    def ssh_options(self) -> list[str]:
        return ["-i", str(self.key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ControlMaster=no", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=3"]

    def in_controller(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.controller_ns, *argv]

    def ssh(self, host: FleetHost, argv: Sequence[str], timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run argv on a host over SSH (quoted for the remote shell, which ssh always goes through)."""
        cmd = self.in_controller(["ssh", *self.ssh_options(), f"root@{host.address}", shlex.join(argv)])
        return _run(cmd, timeout=timeout, check=check)

    def host(self, name: str) -> FleetHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def write_inventory(self, path: Path, groups: Mapping[str, Sequence[str]] | None = None,
                        host_vars: Mapping[str, Mapping[str, object]] | None = None) -> Path:
        """An INI inventory: every host in group `hosttune` (plus `groups`), reached as root with our key."""
        lines = ["[hosttune]"]
        for h in self.hosts:
            extra = "".join(f" {k}={v}" for k, v in (host_vars or {}).get(h.name, {}).items())
            lines.append(f"{h.name} ansible_host={h.address}{extra}")
        for group, members in (groups or {}).items():
            lines += ["", f"[{group}]", *members]
        lines += ["", "[hosttune:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={self.key}",
                  "ansible_python_interpreter=/usr/bin/python3"]
        path.write_text("\n".join(lines) + "\n")
        return path


# ---- ansible ---------------------------------------------------------------------------------------------------
RECAP_RE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$", re.M)


@dataclass
class PlaybookRun:
    returncode: int
    stdout: str
    stderr: str
    recap: dict[str, dict[str, int]]

    def tail(self, n: int = 6000) -> str:
        return (self.stdout + "\n" + self.stderr)[-n:]


def parse_recap(stdout: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines -> {host: {ok, changed, failed, ...}} (the last recap wins)."""
    recap: dict[str, dict[str, int]] = {}
    section = stdout.rsplit("PLAY RECAP", 1)
    if len(section) < 2:
        return recap
    for m in RECAP_RE.finditer(section[1]):
        recap[m["host"]] = {k: int(v) for k, v in (kv.split("=") for kv in m["counts"].split())}
    return recap


def ansible_env(home: Path) -> dict[str, str]:
    """Ansible confined to `home`: its config home, temp dirs and SSH options, nothing from ~/.ansible."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    for sub in ("home", "tmp", "cp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    env.update({
        "PATH": f"{venv_bin}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        "ANSIBLE_HOME": str(home / "home"),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": "/tmp/.ansible-remote",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_GATHERING": "explicit",
        "TMPDIR": str(home / "tmp"),
        "ANSIBLE_LOG_PATH": str(home / "ansible.log"),  # timestamped: where a slow run spent its time
    })
    return env


def run_playbook(fleet: Fleet, playbook: Path, inventory: Path, home: Path, extra_args: Sequence[str] = (),
                 timeout: float = 600) -> PlaybookRun:
    exe = Path(sys.executable).parent / "ansible-playbook"
    argv = fleet.in_controller([str(exe), "-i", str(inventory), str(playbook), *extra_args])
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ansible_env(home),
                          cwd=playbook.parent)
    # Keep every run's output next to the fleet: the first thing to read when a CI run fails.
    logs = sorted(home.glob("run-*.log"))
    log = home / f"run-{len(logs) + 1:02d}-{playbook.stem}.log"
    log.write_text(f"# {shlex.join(argv)}\n# rc={proc.returncode} {time.monotonic() - started:.1f}s\n"
                   f"{proc.stdout}\n{proc.stderr}")
    return PlaybookRun(proc.returncode, proc.stdout, proc.stderr, parse_recap(proc.stdout))


# ---- cleanup helpers -------------------------------------------------------------------------------------------
def remove_cgroup(name: str) -> None:
    """rmdir a cgroup tree bottom-up (cgroup dirs can only be removed empty and leaf-first)."""
    if not name:
        return
    for hierarchy in CGROUP_HIERARCHIES:
        top = CGROUP_ROOT / hierarchy / name
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()


def release_netns_dir() -> None:
    """`ip netns add` bind-mounts /run/netns onto itself; undo that when no namespace is left in it."""
    if NETNS_DIR.is_dir() and _is_mountpoint(NETNS_DIR) and not any(NETNS_DIR.iterdir()):
        _run(["umount", str(NETNS_DIR)], check=False)


def _is_mountpoint(path: Path) -> bool:
    """os.path.ismount misses bind mounts on the same filesystem (the /run/netns case): ask mountinfo."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> None:
    """Remove namespaces and cgroups a crashed earlier run of this harness left behind (its PID is gone)."""
    stale_re = re.compile(rf"^{NAME_PREFIX}-(\d+)[0-9a-f]{{4}}-")
    names: set[str] = set()
    if NETNS_DIR.is_dir():
        names |= {p.name for p in NETNS_DIR.iterdir()}
    for hierarchy in CGROUP_HIERARCHIES:
        d = CGROUP_ROOT / hierarchy
        if d.is_dir():
            names |= {p.name for p in d.iterdir() if p.is_dir()}
    for name in sorted(names):
        m = stale_re.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        if (NETNS_DIR / name).exists():
            _run(["ip", "netns", "delete", name], check=False)
        remove_cgroup(name)  # rmdir fails (and is ignored) on a group that still holds processes


# ---- the boot launcher (runs as a child, inside `unshare --mount --propagation private`) ----------------------
def _boot_main(argv: Sequence[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="fleet.py boot")
    p.add_argument("--name", required=True)
    p.add_argument("--netns", required=True)
    p.add_argument("--lower", required=True)
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--cgroup", required=True)
    p.add_argument("--bind-ro", action="append", default=[], metavar="SRC:DST")
    a = p.parse_args(argv)
    for hierarchy in CGROUP_HIERARCHIES:
        cg = CGROUP_ROOT / hierarchy / a.cgroup
        cg.mkdir(exist_ok=True)
        (cg / "cgroup.procs").write_text(str(os.getpid()))
    merged = a.workdir / "merged"
    _run(["mount", "-t", "overlay", "overlay", "-o",
          f"lowerdir={a.lower},upperdir={a.workdir / 'upper'},workdir={a.workdir / 'work'}", str(merged)])
    # nspawn keeps per-container propagation dirs here; a private tmpfs leaves nothing behind on the host.
    Path("/run/systemd/nspawn").mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run/systemd/nspawn"])
    # --private-network together with --network-namespace-path: the container joins our namespace AND nspawn
    # treats its network as private, so /proc/sys/net (and only it) is writable inside.
    os.execvp("systemd-nspawn", [
        "systemd-nspawn", "--quiet", "-D", str(merged), "--boot", "--register=no", "--keep-unit",
        f"--machine={a.name}", f"--network-namespace-path={NETNS_DIR / a.netns}", "--private-network",
        "--console=pipe", "--link-journal=no", *(f"--bind-ro={b}" for b in a.bind_ro)])


def _up_main(argv: Sequence[str]) -> None:
    rootfs = Path(argv[0])
    work = Path(argv[1]) if len(argv) > 1 else Path(f"/tmp/{NAME_PREFIX}-manual")
    with Fleet(rootfs=rootfs, workdir=work) as fleet:
        for h in fleet.hosts:
            ssh = fleet.in_controller(["ssh", *fleet.ssh_options(), f"root@{h.address}"])
            print(f"{h.name} {h.address}  ssh: {shlex.join(ssh)}")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "boot":
        _boot_main(sys.argv[2:])
    elif len(sys.argv) > 2 and sys.argv[1] == "up":
        _up_main(sys.argv[2:])
    else:
        sys.exit("usage: fleet.py up ROOTFS [WORKDIR] | fleet.py boot ...")
