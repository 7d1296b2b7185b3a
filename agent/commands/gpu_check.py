"""Read-only GPU check for a real NVIDIA machine (scripts/gpu-check.sh): inspect, plan, telemetry, nothing set.

Lent GPU machines are shared, so this must never change a GPU. Three layers make sure of it, and the check fails
(exit 1) if any mutating NVML function was even looked up:
  1. the NVML session is read-only (dry_run): the funnel refuses every setter and reset;
  2. the GPU tuner is asked to apply a planned change and must refuse before journaling or touching NVML
     (the "dry-run flag the tuner honours");
  3. a MutationGuard sits on pynvml's C-function lookup for the whole run and records any mutating name, so even
     code that bypassed the funnel could not reach the library.
On a real machine the GPUs NVML lists are cross-checked against `nvidia-smi --query-gpu` (a read-only query, run
through `sh`): a GPU one sees and the other does not fails the check; no nvidia-smi installed is only noted.
With --sim FILE the same run goes against the C-level simulator (how it is tested without a GPU; no nvidia-smi).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import sh

from agent.errors import HostError, HostTuneError
from agent.gpu.device import reason_names
from agent.gpu.nvml import DryRunViolation, MutationGuard, Nvml, forbid_mutations, open_nvml
from agent.hostfs import HostPaths
from agent.inspect import collect
from agent.inspect.models import Gpu, GpuStatus, HostFacts
from agent.policy.loader import load_policy
from agent.policy.model import GpuSpec, Policy
from agent.render import human_bytes, table
from agent.telemetry.gpu import sample_gpus
from agent.tuners.gpu import GpuTuner
from agent.tuning.journal import Journal
from agent.tuning.plan import make_plan
from agent.tuning.writer import HostWriter

CHECK_POLICY = Policy(name="gpu-check", gpu=[GpuSpec(locked_clocks="max", memory_locked_clocks="max",
                                                      power_limit_w="90%", persistence_mode=True)])


def _mhz(cur: int | None, top: int | None) -> str:
    return f"{cur if cur is not None else '-'}/{top if top is not None else '-'}"


def _w(mw: int | None) -> str:
    return "-" if mw is None else f"{mw / 1000:g}"


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


NVIDIA_SMI_QUERY = ("--query-gpu=index,uuid,name", "--format=csv,noheader")
NVIDIA_SMI_TIMEOUT_S = 60


class NvidiaSmiMissing(HostError):
    """nvidia-smi is not installed (not on PATH)."""


def nvidia_smi_gpus() -> list[tuple[int, str, str]]:
    """(index, uuid, name) of every GPU `nvidia-smi --query-gpu` lists (a read-only query).

    sh's errors become HostErrors that say what happened: CommandNotFound -> NvidiaSmiMissing, ErrorReturnCode ->
    the exit status and nvidia-smi's own last line, TimeoutException -> how long it was given."""
    try:
        smi = sh.Command("nvidia-smi")
    except sh.CommandNotFound:
        raise NvidiaSmiMissing("nvidia-smi not found on PATH (the NVIDIA driver utilities are not installed)") from None
    try:
        text = str(smi(*NVIDIA_SMI_QUERY, _timeout=NVIDIA_SMI_TIMEOUT_S, _tty_out=False))
    except sh.ForkException as e:
        raise HostError(f"nvidia-smi could not be started: {e}") from None
    except sh.ErrorReturnCode as e:
        said = (e.stderr or e.stdout or b"").decode(errors="replace").strip().splitlines()
        raise HostError(f"nvidia-smi exited with status {e.exit_code}"
                        + (f": {said[-1].strip()}" if said else " and printed nothing")) from None
    except sh.TimeoutException:
        raise HostError(f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S} s") from None
    gpus = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",", 2)]
        if len(parts) == 3 and parts[0].isdigit():  # anything else (a driver warning) is not a GPU row
            gpus.append((int(parts[0]), parts[1], parts[2]))
    return gpus


def cross_check_nvidia_smi(gpus: Sequence[Gpu], status: GpuStatus, out: TextIO) -> list[str]:
    """Compare the GPUs NVML listed with nvidia-smi's list, by UUID. Returns the problems found."""
    try:
        listed = nvidia_smi_gpus()
    except NvidiaSmiMissing as e:
        out.write(f"== nvidia-smi: {e.message}; cross-check skipped\n")
        return []
    except HostError as e:
        if not status.available:  # no driver: nvidia-smi failing says the same as NVML
            out.write(f"== nvidia-smi: {e.message} (NVML: {status.reason})\n")
            return []
        return [f"NVML lists {len(gpus)} GPU(s) but {e.message}"]
    out.write(f"== nvidia-smi: {len(listed)} GPU(s)\n")
    nvml_uuids = {g.uuid for g in gpus}
    smi_uuids = {uuid for _, uuid, _ in listed}
    problems = [f"nvidia-smi lists GPU {i} {uuid} ({name}) that NVML did not" for i, uuid, name in listed
                if uuid not in nvml_uuids]
    problems += [f"NVML lists GPU {g.index} {g.uuid} ({g.name}) that nvidia-smi does not" for g in gpus
                 if g.uuid not in smi_uuids]
    return problems


def print_inspect(facts: HostFacts, out: TextIO) -> None:
    s = facts.gpu_status
    out.write(f"== inspect: NVML available={s.available} driver={s.driver_version} nvml={s.nvml_version} "
              f"cuda={s.cuda_driver_version} gpus={s.count}{'' if s.available else f' ({s.reason})'}\n")
    table(("gpu", "name", "pci", "numa", "memory", "used", "sm MHz cur/max", "mem MHz cur/max", "sm clocks",
           "power W lim/def/min/max", "persist"),
          [[g.index, g.name, g.pci_bus_id, g.numa_node, human_bytes(g.memory_total_bytes),
            human_bytes(g.memory_used_bytes), _mhz(g.clocks.sm_mhz, g.max_clocks.sm_mhz),
            _mhz(g.clocks.mem_mhz, g.max_clocks.mem_mhz),
            sum(len(v) for v in (g.supported_graphics_clocks_mhz or {}).values()) or None,
            "/".join(_w(v) for v in (g.power.limit_mw, g.power.default_limit_mw, g.power.min_limit_mw,
                                     g.power.max_limit_mw)),
            g.persistence_mode] for g in facts.gpus], out)
    for e in s.errors:
        out.write(f"gpu error: {e}\n")


def check_tuner_refuses(facts: HostFacts, paths: HostPaths, nvml: Nvml, out: TextIO) -> list[str]:
    """Plan the check policy with the GPU tuner alone and ask it to apply the first change: it must refuse."""
    problems: list[str] = []
    tuner = GpuTuner(nvml)
    plan = make_plan(CHECK_POLICY, facts, paths, tuners=[tuner])
    plan.changes = [c for c in plan.changes if c.tuner == tuner.name]
    out.write(f"== plan {CHECK_POLICY.name} (GPU tuner, read-only): {plan.summary()}\n")
    table(("target", "current", "desired", "value", "action", "reason"),
          [[c.target, c.current, c.desired, c.value, c.action, c.reason] for c in plan.changes], out)
    writable = [c for c in plan.changes if c.writes]
    if not writable:
        out.write("dry-run refusal: nothing to apply here, not exercised\n")
        return problems
    with tempfile.TemporaryDirectory(prefix="hosttune-gpu-check-") as tmp:
        journal = Journal(Path(tmp) / "journal.json")
        journal.begin("apply", policy=CHECK_POLICY.name)
        writer = HostWriter(journal)
        try:
            tuner.apply(writable[0], writer)
            problems.append(f"the GPU tuner applied {writable[0].target} in dry-run mode")
        except DryRunViolation as e:
            problems.append(f"the GPU tuner did not refuse; only the NVML funnel stopped it: {e}")
        except HostError as e:
            if "read-only" not in e.message:
                problems.append(f"the GPU tuner failed for another reason than dry-run: {e}")
            else:
                out.write(f"dry-run refusal: ok ({e.message.split(':')[0]})\n")
        if journal.data.originals or writer.writes:
            problems.append("the refused apply journaled or counted a write")
    return problems


def print_telemetry(nvml: Nvml, samples: int, interval_s: float, out: TextIO) -> None:
    out.write(f"== telemetry: {samples} samples, {interval_s:g} s apart\n")
    rows = []
    for n in range(samples):
        if n:
            time.sleep(interval_s)
        for r in sample_gpus(nvml):
            rows.append([n, r.index, _n(r.util_pct), _n(r.mem_util_pct), human_bytes(r.mem_used_bytes),
                         _n(r.sm_clock_mhz), _n(r.mem_clock_mhz), _n(r.power_w), _n(r.power_limit_w), _n(r.temp_c),
                         ",".join(reason_names(r.throttle_reasons)) or "none"])
    table(("sample", "gpu", "util%", "mem%", "used", "sm MHz", "mem MHz", "power W", "limit W", "temp C",
           "clock events"), rows, out)


def run(sim: Path | None, policy_ref: str | None, samples: int, interval_s: float, out: TextIO, *,
        require_gpu: bool = False) -> int:
    paths = HostPaths.live()
    problems: list[str] = []
    guard: MutationGuard
    nvml = open_nvml(sim, dry_run=True)
    with forbid_mutations() as guard:
        try:
            facts = collect(paths, nvml)
            print_inspect(facts, out)
            if require_gpu and not facts.gpus:
                problems.append(f"no GPU seen ({facts.gpu_status.reason or 'NVML lists none'})")
            if sim is None:
                problems += cross_check_nvidia_smi(facts.gpus, facts.gpu_status, out)
            problems += check_tuner_refuses(facts, paths, nvml, out)
            if policy_ref:
                loaded = load_policy(policy_ref, facts)
                plan = make_plan(loaded.policy, facts, paths, tuners=[GpuTuner(nvml)])
                plan.changes = [c for c in plan.changes if c.tuner == GpuTuner.name]
                out.write(f"== plan {loaded.policy.name} (GPU part): {plan.summary()}\n")
                table(("target", "current", "desired", "action", "reason"),
                      [[c.target, c.current, c.desired, c.action, c.reason] for c in plan.changes], out)
            print_telemetry(nvml, samples, interval_s, out)
        except HostTuneError as e:
            problems.append(f"{type(e).__name__}: {e}")
    if guard.attempts:
        problems.append(f"mutating NVML functions were looked up: {', '.join(guard.attempts)}")
    out.write(f"== mutating NVML calls: {len(guard.attempts)} (dry_run={nvml.dry_run}, simulated={nvml.simulated})\n")
    for p in problems:
        out.write(f"FAIL: {p}\n")
    out.write("gpu-check: " + ("FAILED" if problems else "ok, read-only") + "\n")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim", type=Path, help="run against the NVML simulator described by FILE")
    parser.add_argument("--policy", default="llm-gpu-throughput",
                        help="also plan this policy's GPU part (default llm-gpu-throughput; '' to skip)")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between telemetry samples")
    parser.add_argument("--require-gpu", action="store_true", help="fail when NVML sees no GPU")
    args = parser.parse_args(argv)
    return run(args.sim, args.policy or None, args.samples, args.interval, sys.stdout,
               require_gpu=args.require_gpu)


if __name__ == "__main__":
    sys.exit(main())
