"""hosttune's command line. Each command lives in agent/commands/<name>.py and registers itself here.

Errors: HostTuneError subclasses print one line ("hosttune: error: ...") and exit with their code
(2 for bad input, 1 for host failures); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.errors import HostTuneError

# Modules under agent.commands, each with register(subparsers, common) -> None.
COMMAND_MODULES: tuple[str, ...] = (
    "inspect",
    "plan",
    "apply",
    "verify",
    "revert",
    "status",
    "daemon",
    "install_unit",
    "gateway",
    "bench",
    "policy",
    "fit",
    "worker",
    "controller",
)

DESCRIPTION = """\
hosttune: the autopilot for LLM inference hosts.

It inspects the host (CPU/NUMA, memory, hugepages, THP, block devices, GPUs, sysctl), plans and applies tuning
from a declarative policy with a crash-safe journal (plan, apply, verify, revert), and launches, places and
supervises the inference worker (llama.cpp's llama-server or a PyTorch worker).
"""

EPILOG = """\
host roots (every command that reads or writes the host):
  --procfs DIR / HOSTTUNE_PROCFS   default /proc
  --sysfs DIR  / HOSTTUNE_SYSFS    default /sys
  --rootfs DIR / HOSTTUNE_ROOTFS   default /     (e.g. /host inside a container, or a fixture tree)

examples:
  hosttune inspect                 a readable summary of this host
  hosttune inspect --json          the same facts as JSON (schema: hosttune inspect --schema)
  hosttune <command> --help        what each command does, with examples
"""


def host_root_options() -> argparse.ArgumentParser:
    """Options shared by every command that touches the host; add as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("host roots")
    g.add_argument("--procfs", metavar="DIR", help="procfs root (env HOSTTUNE_PROCFS, default /proc)")
    g.add_argument("--sysfs", metavar="DIR", help="sysfs root (env HOSTTUNE_SYSFS, default /sys)")
    g.add_argument("--rootfs", metavar="DIR", help="root filesystem (env HOSTTUNE_ROOTFS, default /)")
    g.add_argument("--nvml-sim", metavar="FILE", default=os.environ.get("HOSTTUNE_NVML_SIM"),
                   help="simulate NVML from a GPU description (fixture hosts, offline planning; "
                        "env HOSTTUNE_NVML_SIM)")
    return common


def state_dir_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", metavar="DIR",
                        default=os.environ.get("HOSTTUNE_STATE_DIR", "/var/lib/hosttune"),
                        help="journal and state (env HOSTTUNE_STATE_DIR, default /var/lib/hosttune)")
    return common


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command named on the command line, when it is one of ours (the first word that is not an option)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            module = arg.replace("-", "_")
            return module if module in COMMAND_MODULES else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with only the one argv names: importing a command's module pulls in its
    part of hosttune (the daemon: the API and the tuning engine), so `hosttune daemon` does not also pay for
    inspection tables, the benchmark and the controller's replay tools before it starts tuning."""
    parser = argparse.ArgumentParser(prog="hosttune", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hosttune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    only = chosen_command(argv) if argv is not None else None
    for name in (only,) if only else COMMAND_MODULES:
        module = importlib.import_module(f"agent.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except HostTuneError as e:
        print(f"hosttune: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
