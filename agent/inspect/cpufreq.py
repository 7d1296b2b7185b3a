"""CPU frequency scaling per online CPU: governor, driver, energy-performance preference, limits.

Read through cpuN/cpufreq (the kernel links it to the CPU's policyN directory), which is also where the cpu
tuner writes. Most VMs, this project's included, have no cpufreq driver: that is `available: false` with a
reason, which the tuner turns into "not applicable".
"""

from __future__ import annotations

from agent.fsio import read_int, read_str
from agent.hostfs import HostPaths
from agent.inspect import parse
from agent.inspect.models import CpufreqCpu, CpufreqFacts
from agent.inspect.registry import register

NO_DRIVER = "no cpufreq driver"


def _online(paths: HostPaths) -> list[int]:
    root = paths.sys("devices/system/cpu")
    online = parse.read_cpu_list(root / "online")
    if online is not None:
        return online
    return sorted(int(p.name[3:]) for p in root.glob("cpu[0-9]*") if p.name[3:].isdigit())


def _fallback() -> CpufreqFacts:
    return CpufreqFacts(available=False, reason="cpufreq collector failed")


@register("cpufreq", fallback=_fallback)
def collect(paths: HostPaths) -> CpufreqFacts:
    cpus: list[CpufreqCpu] = []
    for cpu in _online(paths):
        d = paths.sys("devices/system/cpu", f"cpu{cpu}", "cpufreq")
        governor = read_str(d / "scaling_governor")
        driver = read_str(d / "scaling_driver")
        if governor is None and driver is None:
            continue
        cpus.append(CpufreqCpu(
            cpu=cpu,
            governor=governor or None,
            available_governors=parse.words(d / "scaling_available_governors"),
            driver=driver or None,
            energy_performance_preference=read_str(d / "energy_performance_preference") or None,
            available_energy_performance_preferences=parse.words(d / "energy_performance_available_preferences"),
            min_khz=read_int(d / "scaling_min_freq"),
            max_khz=read_int(d / "scaling_max_freq"),
        ))
    if not cpus:
        return CpufreqFacts(available=False, reason=NO_DRIVER)
    drivers = {c.driver for c in cpus if c.driver}
    return CpufreqFacts(available=True, driver=drivers.pop() if len(drivers) == 1 else None, cpus=cpus)
