"""Host inspection: read-only facts about the host, one collector per domain, as one HostFacts document.

collect() runs every registered collector against the roots in HostPaths (the live host or a fixture tree).
A collector that breaks unexpectedly is contained: its field gets an empty fallback value and the failure is
listed in `errors` (node_exporter's rule: one broken collector must not hide every other fact). A malformed
file is different: that is bad input and its InputError propagates, so the CLI exits 2 naming the path.
GPUs come from NVML through agent.gpu.nvml (the one funnel for NVML calls) rather than from sysfs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.errors import HostTuneError, InputError
from agent.hostfs import HostPaths
from agent.inspect import block, cpu, cpufreq, hugepages, kernel, memory, rival_tuners, sysctl, thp  # noqa: F401
from agent.inspect.models import Gpu, GpuStatus, HostFacts
from agent.inspect.registry import COLLECTORS

if TYPE_CHECKING:
    from agent.gpu.nvml import Nvml

__all__ = ["collect"]


def _failure(field: str, exc: BaseException) -> str:
    return f"{field}: {type(exc).__name__}: {exc}"


def collect_gpus(paths: HostPaths, nvml: Nvml | None, errors: list[str]) -> tuple[list[Gpu], GpuStatus]:
    """GPUs through NVML; `nvml=None` opens the real library. A missing library is "no GPUs", not an error."""
    from agent.gpu.nvml import open_nvml
    from agent.inspect.gpu import inspect_gpus

    try:
        handle = open_nvml() if nvml is None else nvml
        return inspect_gpus(paths, handle)
    except InputError:
        raise
    except HostTuneError as e:
        errors.append(_failure("gpus", e))
        return [], GpuStatus(available=False, reason=str(e))
    except Exception as e:  # contained like every collector: the other facts still matter
        errors.append(_failure("gpus", e))
        return [], GpuStatus(available=False, reason=f"GPU inspection failed: {type(e).__name__}: {e}")


def collect(paths: HostPaths, nvml: Nvml | None = None) -> HostFacts:
    """Every fact about the host under `paths`. Raises InputError for a missing root or a malformed file."""
    paths.check()
    values: dict[str, Any] = {}
    errors: list[str] = []
    for collector in COLLECTORS.values():
        if not collector.enabled:
            continue
        try:
            values[collector.field] = collector.collect(paths)
        except InputError:
            raise
        except Exception as e:
            errors.append(_failure(collector.field, e))
            values[collector.field] = collector.fallback()
    gpus, gpu_status = collect_gpus(paths, nvml, errors)
    return HostFacts(**values, gpus=gpus, gpu_status=gpu_status, errors=errors)
