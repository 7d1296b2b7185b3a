"""`hosttune install-unit`: install the systemd unit, the tmpfiles.d entry, the sysusers.d entry (the worker's
unprivileged user), the udev rule template and an example config, with ExecStart pointing at THIS installation's
`hosttune` (a venv, /usr/local, a wheel in /opt ...).

`--root DIR` installs into another root (an image being built, or the nspawn test container). Nothing existing is
overwritten except the unit, tmpfiles and sysusers files themselves; an existing /etc/hosttune/daemon.yaml is kept.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import sh

from agent.errors import HostError, InputError
from agent.fsio import atomic_write, read_text_capped

UNIT_NAME = "hosttune.service"
SYSTEMD_FILES = ("hosttune.service", "hosttune.tmpfiles.conf", "hosttune.sysusers.conf", "daemon.yaml",
                 "60-hosttune-block.rules.template")
EXEC_RE = re.compile(r"^ExecStart=(\S+)", re.MULTILINE)
SYSTEMCTL_TIMEOUT_S = 60.0


def systemd_dir() -> Path:
    """The systemd/ files: the source tree's (editable installs) or the wheel's share/hosttune/systemd."""
    candidates = [Path(__file__).resolve().parents[2] / "systemd", Path(sys.prefix) / "share/hosttune/systemd"]
    for c in candidates:
        if (c / UNIT_NAME).is_file():
            return c
    raise HostError("systemd files not found (looked in " + ", ".join(map(str, candidates)) + ")")


def default_exec() -> Path:
    """This installation's console script: next to the running interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "hosttune"
    if beside.is_file():
        return beside
    found = shutil.which("hosttune")
    if found:
        return Path(found)
    raise InputError("cannot find the hosttune executable; pass --exec PATH", field="--exec")


def render_unit(template: str, exec_path: Path) -> str:
    if not exec_path.is_absolute():
        raise InputError("ExecStart needs an absolute path", path=str(exec_path), field="--exec")
    rendered, n = EXEC_RE.subn(lambda m: f"ExecStart={exec_path}", template, count=1)
    if n != 1:
        raise HostError("the unit template has no ExecStart= line")
    return rendered


def _run(argv: list[str]) -> None:
    """One systemctl call (an argument list through `sh`, output captured): a missing tool is a note, a failure
    or a timeout a HostError with the tool's own words."""
    try:
        sh.Command(argv[0])(*argv[1:], _timeout=SYSTEMCTL_TIMEOUT_S, _tty_out=False)
    except sh.CommandNotFound:
        print(f"note: {argv[0]} not found, skipped: {' '.join(argv)}", file=sys.stderr)
    except sh.ErrorReturnCode as e:
        said = (e.stderr or e.stdout).decode(errors="replace").strip()
        raise HostError(f"{' '.join(argv)} failed: {said}") from None
    except sh.TimeoutException:
        raise HostError(f"{' '.join(argv)} timed out") from None
    except sh.ForkException as e:
        raise HostError(f"{' '.join(argv)} could not start: {str(e).strip().splitlines()[-1].strip()}") from None


def install(root: Path, exec_path: Path) -> list[Path]:
    src = systemd_dir()
    written: list[Path] = []
    targets = {
        "hosttune.service": root / "etc/systemd/system" / UNIT_NAME,
        "hosttune.tmpfiles.conf": root / "etc/tmpfiles.d/hosttune.conf",
        "hosttune.sysusers.conf": root / "etc/sysusers.d/hosttune.conf",  # the worker's unprivileged user
        "60-hosttune-block.rules.template": root / "usr/local/share/hosttune/60-hosttune-block.rules.template",
    }
    for name, dest in targets.items():
        text = read_text_capped(src / name)
        if name == "hosttune.service":
            text = render_unit(text, exec_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, text, mode=0o644)
        written.append(dest)
    config = root / "etc/hosttune/daemon.yaml"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(config, read_text_capped(src / "daemon.yaml"), mode=0o644)
        written.append(config)
    (root / "etc/hosttune/policies").mkdir(parents=True, exist_ok=True)
    state = root / "var/lib/hosttune"
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    return written


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "install-unit", help="install the systemd unit, tmpfiles.d entry and example config",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  sudo hosttune install-unit --enable\n"
               "  hosttune install-unit --print\n  hosttune install-unit --root /srv/image --exec /opt/ht/bin/hosttune")
    p.add_argument("--root", metavar="DIR", default="/", help="install under this root (default /)")
    p.add_argument("--exec", metavar="PATH", help="hosttune executable for ExecStart (default: this one)")
    p.add_argument("--print", action="store_true", help="print the rendered unit and exit")
    p.add_argument("--enable", action="store_true", help="also `systemctl enable --now hosttune` (root / only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    exec_path = Path(args.exec) if args.exec else default_exec()
    if args.print:
        sys.stdout.write(render_unit(read_text_capped(systemd_dir() / UNIT_NAME), exec_path))
        return 0
    root = Path(args.root)
    if not root.is_dir():
        raise InputError("install root is not a directory", path=root, field="--root")
    for path in install(root, exec_path):
        print(f"installed {path}")
    live = root.resolve() == Path("/")
    if live:
        _run(["systemd-sysusers", "/etc/sysusers.d/hosttune.conf"])
        _run(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/hosttune.conf"])
        if systemd_running():
            _run(["systemctl", "daemon-reload"])
            if args.enable:
                _run(["systemctl", "enable", "--now", UNIT_NAME])
                print(f"enabled and started {UNIT_NAME}")
        elif args.enable:
            print("note: systemd is not PID 1 here; not enabling", file=sys.stderr)
    return 0
