"""hosttune's command line. Each command lives in agent/commands/<name>.py and registers itself here.

Errors: HostTuneError subclasses print one line ("hosttune: error: ...") and exit with their code
(2 for bad input, 1 for host failures); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agent import __version__
from agent.errors import HostTuneError

# Modules under agent.commands, each with register(subparsers) -> None (imported by register_command).
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
        register_command(name, sub)
    return parser


def register_command(name: str, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Import the module of one command of COMMAND_MODULES, only now (see build_parser), and add its parser."""
    match name:
        case "inspect":
            from agent.commands import inspect
            inspect.register(sub)
        case "plan":
            from agent.commands import plan
            plan.register(sub)
        case "apply":
            from agent.commands import apply
            apply.register(sub)
        case "verify":
            from agent.commands import verify
            verify.register(sub)
        case "revert":
            from agent.commands import revert
            revert.register(sub)
        case "status":
            from agent.commands import status
            status.register(sub)
        case "daemon":
            from agent.commands import daemon
            daemon.register(sub)
        case "install_unit":
            from agent.commands import install_unit
            install_unit.register(sub)
        case "gateway":
            from agent.commands import gateway
            gateway.register(sub)
        case "bench":
            from agent.commands import bench
            bench.register(sub)
        case "policy":
            from agent.commands import policy
            policy.register(sub)
        case "fit":
            from agent.commands import fit
            fit.register(sub)
        case "worker":
            from agent.commands import worker
            worker.register(sub)
        case "controller":
            from agent.commands import controller
            controller.register(sub)
        case _:
            raise KeyError(f"no command module {name!r}")


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
