"""The running kernel: release, build version, the command line (and its parameters), and the hostname.

Parameters are parsed the way the kernel does: whitespace-separated, double quotes may wrap a value with
spaces, and everything after a lone `--` belongs to init, not the kernel, so it is kept in `cmdline` but not
parsed into `cmdline_params`.
"""

from __future__ import annotations

from agent.fsio import read_str
from agent.hostfs import HostPaths
from agent.inspect.models import KernelFacts
from agent.inspect.registry import register


def split_cmdline(cmdline: str) -> list[str]:
    """Split like the kernel's next_arg(): spaces separate, double quotes group (and are dropped)."""
    args: list[str] = []
    current: list[str] = []
    in_quote = False
    started = False
    for ch in cmdline:
        if ch == '"':
            in_quote = not in_quote
            started = True
            continue
        if ch.isspace() and not in_quote:
            if started:
                args.append("".join(current))
                current, started = [], False
            continue
        current.append(ch)
        started = True
    if started:
        args.append("".join(current))
    return args


def parse_cmdline(cmdline: str) -> dict[str, str | None]:
    """'quiet hugepages=16 isolcpus="1-3"' -> {'quiet': None, 'hugepages': '16', 'isolcpus': '1-3'}.

    A repeated parameter keeps its last value (what most kernel parameters do).
    """
    params: dict[str, str | None] = {}
    for arg in split_cmdline(cmdline):
        if arg == "--":
            break
        key, sep, value = arg.partition("=")
        params[key] = value if sep else None
    return params


@register("kernel", fallback=KernelFacts)
def collect(paths: HostPaths) -> KernelFacts:
    cmdline = read_str(paths.proc("cmdline"))
    return KernelFacts(
        release=read_str(paths.sysctl("kernel.osrelease")) or None,
        version=read_str(paths.sysctl("kernel.version")) or None,
        cmdline=cmdline,
        cmdline_params=parse_cmdline(cmdline) if cmdline else {},
    )


@register("hostname", fallback=lambda: None)
def hostname(paths: HostPaths) -> str | None:
    return read_str(paths.sysctl("kernel.hostname")) or None
