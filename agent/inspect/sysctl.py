"""Current values of the sysctls an inference-host policy may set.

SYSCTL_KEYS is the one curated list: inspection reports these keys, and other parts (policy checks, docs, the
daemon's drift view) use it to know which keys matter. The sysctl tuner itself accepts any key the kernel has;
this list is about what is worth showing. Keys absent on this kernel are omitted; values are whitespace
normalised ('32768\\t60999' -> '32768 60999') because that is how they are compared.
"""

from __future__ import annotations

from agent.fsio import read_text
from agent.hostfs import HostPaths
from agent.inspect import parse
from agent.inspect.registry import register

SYSCTL_KEYS: tuple[str, ...] = (
    # memory: swapping, mappings (large models mmap many regions), hugepages, overcommit, writeback, NUMA
    "vm.swappiness",
    "vm.max_map_count",
    "vm.nr_hugepages",
    "vm.nr_overcommit_hugepages",
    "vm.overcommit_memory",
    "vm.overcommit_ratio",
    "vm.dirty_ratio",
    "vm.dirty_background_ratio",
    "vm.dirty_bytes",
    "vm.dirty_background_bytes",
    "vm.dirty_expire_centisecs",
    "vm.dirty_writeback_centisecs",
    "vm.vfs_cache_pressure",
    "vm.zone_reclaim_mode",
    "vm.min_free_kbytes",
    "vm.watermark_scale_factor",
    "vm.compaction_proactiveness",
    "vm.stat_interval",
    # scheduler and NUMA balancing (page migration stalls decode)
    "kernel.numa_balancing",
    "kernel.sched_autogroup_enabled",
    "kernel.timer_migration",
    "kernel.nmi_watchdog",
    "kernel.pid_max",
    "kernel.threads-max",
    "kernel.shmmax",
    "kernel.shmall",
    # files: many model shards, many client sockets
    "fs.file-max",
    "fs.nr_open",
    "fs.aio-max-nr",
    "fs.inotify.max_user_watches",
    # network (per namespace): the serving front door
    "net.core.somaxconn",
    "net.core.netdev_max_backlog",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.core.rmem_default",
    "net.core.wmem_default",
    "net.core.default_qdisc",
    "net.core.busy_poll",
    "net.core.busy_read",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_congestion_control",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fastopen",
    "net.ipv4.tcp_notsent_lowat",
)


@register("sysctl", fallback=dict)
def collect(paths: HostPaths) -> dict[str, str]:
    values: dict[str, str] = {}
    for key in SYSCTL_KEYS:
        text = read_text(paths.sysctl(key))
        if text is not None:
            values[key] = parse.normalize_space(text)
    return values
