"""The daemon's own footprint next to TuneD 2.20, in one run on this machine.

    sudo .venv/bin/python bench/daemon_overhead.py [--runs 3] [--idle-s 60] [--json FILE]

Two measurements per daemon (needs root and `apt-get install tuned`):

1. Launch to policy applied, on the live host. TuneD: `tuned --no-dbus --no-socket -p throughput-performance -l LOG`
   until its log says the profile's static tuning is applied. hosttune: `hosttune daemon` with the same settings
   (bench/tuned-throughput-equivalent.yaml: the profile's sysctls; no worker, no gateway) until
   its STATUS says the policy is applied, and until READY=1 (policy applied *and* the API serving). Each run is
   stopped right after (both restore the host: TuneD rolls back on SIGTERM, hosttune here has revert_on_stop);
   the script checks that the touched values are back. Windows of a second or two, alternating daemons.

2. Idle for --idle-s seconds after start: CPU time (user+system, children included) and RSS at the end.
   hosttune runs as `make run`'s daemon does minus the worker: telemetry at 1 Hz, drift check every 60 s, API up —
   on a copy of a fixture host tree, so a minute of idling does not keep this shared machine's kernel tuned while
   other test sessions run. TuneD idles in a private mount namespace where /proc/sys and /sys are read-only, for
   the same reason: its writes fail (it logs them) and it then sits in its 1 s main loop as usual. Neither idle
   cost depends on whether the writes landed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # agent and the tests package, as the other benches

from agent.bench.llama_local import free_port
from tests.support.daemon_fixtures import NotifyListener
from tests.support.trees import make_tree

REPO = Path(__file__).resolve().parent.parent
HOSTTUNE = Path(sys.executable).parent / "hosttune"
EQUIVALENT_POLICY = REPO / "bench/tuned-throughput-equivalent.yaml"
TUNED_APPLIED = "static tuning from profile 'throughput-performance' applied"
WATCHED = ["/proc/sys/vm/dirty_ratio", "/proc/sys/vm/dirty_background_ratio", "/proc/sys/vm/swappiness",
           "/proc/sys/net/core/somaxconn", *sorted(str(p) for p in Path("/sys/block").glob("vd*/queue/read_ahead_kb"))]


def snapshot() -> dict[str, str]:
    return {p: Path(p).read_text() for p in WATCHED if Path(p).exists()}


class Notify(NotifyListener):
    """The tests' notify socket (it timestamps each sd_notify message on arrival), plus the first match's time."""

    def first(self, pred: Any, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t, m in list(self.messages):
                if pred(m):
                    return t
            time.sleep(0.002)
        raise TimeoutError(f"no matching notify message; got {[m for _, m in self.messages]}")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by PID
            proc.wait(10)


def hosttune_config(tmp: Path, **extra: Any) -> Path:
    cfg = {"policy": str(EQUIVALENT_POLICY), "state_dir": str(tmp / "state"), "api": {"port": free_port()},
           "gateway": {"enabled": False}, "worker": {"enabled": False}, "telemetry_interval_s": 1,
           "drift_check_s": 60, "revert_on_stop": True, **extra}
    path = tmp / "daemon.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HOSTTUNE_", "NOTIFY_", "WATCHDOG_"))}


# --- 1. launch to applied -------------------------------------------------------------------------------------
def time_hosttune_apply() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ht-bench-") as d:
        tmp = Path(d)
        notify = Notify(tmp / "notify")
        env = {**clean_env(), "NOTIFY_SOCKET": str(notify.path)}
        t0 = time.monotonic()
        proc = subprocess.Popen([str(HOSTTUNE), "daemon", "--config", str(hosttune_config(tmp))], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            applied = notify.first(lambda m: m.get("STATUS", "").startswith("policy ") and "applied" in m["STATUS"],
                                   60)
            ready = notify.first(lambda m: m.get("READY") == "1", 60)
        finally:
            stop(proc)
            notify.close()
        return {"applied_s": applied - t0, "ready_s": ready - t0}


def time_tuned_apply() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tuned-bench-") as d:
        log = Path(d) / "tuned.log"
        t0 = time.monotonic()
        proc = subprocess.Popen(["tuned", "--no-dbus", "--no-socket", "-p", "throughput-performance", "-l", str(log)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = t0 + 60
            while time.monotonic() < deadline:
                if log.exists() and TUNED_APPLIED in log.read_text(errors="replace"):
                    return {"applied_s": time.monotonic() - t0}
                time.sleep(0.002)
            raise TimeoutError("TuneD did not report the profile applied")
        finally:
            stop(proc)


# --- 2. idle -------------------------------------------------------------------------------------------------
def measure_idle(pid: int, seconds: float) -> dict[str, float]:
    proc = psutil.Process(pid)

    def cpu() -> float:
        t = proc.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)

    start_cpu, t0 = cpu(), time.monotonic()
    peak = 0
    while time.monotonic() - t0 < seconds:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(1)
    elapsed = time.monotonic() - t0
    used = cpu() - start_cpu
    rss = proc.memory_info().rss
    return {"seconds": elapsed, "cpu_s": used, "cpu_pct_of_core": 100 * used / elapsed,
            "rss_mb": rss / 1e6, "rss_peak_mb": max(peak, rss) / 1e6}


def fixture_host(dest: Path) -> dict[str, str]:
    """A copy of the unit tests' "server" tree (agent-independent: built by tests/support/trees.py)."""
    paths = make_tree("server", dest)
    # Keys the equivalent policy sets that the small tree lacks, with this kernel's defaults.
    for key, value in {"vm/dirty_background_ratio": "10\n", "vm/dirty_ratio": "20\n"}.items():
        f = paths.procfs / "sys" / key
        if not f.exists():
            f.write_text(value)
    sim = dest.parent / "nvml-missing.json"
    sim.write_text('{"library": "missing"}\n')
    return {"procfs": str(paths.procfs), "sysfs": str(paths.sysfs), "rootfs": str(paths.rootfs), "nvml_sim": str(sim)}


@contextlib.contextmanager
def idle_hosttune() -> Iterator[int]:
    with tempfile.TemporaryDirectory(prefix="ht-idle-") as d:
        tmp = Path(d)
        roots = fixture_host(tmp / "host")
        # The equivalent policy's block section matches vd* disks; the fixture tree has nvme/sd: it is "ok/n.a.".
        notify = Notify(tmp / "notify")
        env = {**clean_env(), "NOTIFY_SOCKET": str(notify.path)}
        proc = subprocess.Popen([str(HOSTTUNE), "daemon", "--config", str(hosttune_config(tmp, **roots))], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            notify.first(lambda m: m.get("READY") == "1", 60)
            yield proc.pid
        finally:
            stop(proc)
            notify.close()


@contextlib.contextmanager
def idle_tuned() -> Iterator[int]:
    with tempfile.TemporaryDirectory(prefix="tuned-idle-") as d:
        log = Path(d) / "tuned.log"
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", sys.executable, __file__,
                                 "_readonly_exec", "tuned", "--no-dbus", "--no-socket", "-p", "throughput-performance",
                                 "-l", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not (log.exists() and TUNED_APPLIED in log.read_text(errors="replace")):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("TuneD did not start in the read-only namespace")
                time.sleep(0.05)
            yield proc.pid
        finally:
            stop(proc)


def _readonly_exec(argv: list[str]) -> None:
    """Inside `unshare --mount`: make /proc/sys and /sys read-only in this namespace, then exec argv."""
    for path in ("/proc/sys", "/sys"):
        subprocess.run(["mount", "--bind", path, path], check=True, timeout=30)
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True, timeout=30)
    os.execvp(argv[0], argv)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle-s", type=float, default=60)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("tuned") is None:
        sys.exit("needs root and TuneD (apt-get install tuned)")
    before = snapshot()
    result: dict[str, Any] = {"tuned_version": subprocess.run(["dpkg-query", "-W", "-f=${Version}", "tuned"],
                                                              capture_output=True, text=True).stdout,
                              "apply": {"hosttune": [], "tuned": []}, "idle": {}}
    for _ in range(args.runs):
        result["apply"]["tuned"].append(time_tuned_apply())
        assert snapshot() == before, "TuneD did not restore the host"
        result["apply"]["hosttune"].append(time_hosttune_apply())
        assert snapshot() == before, "hosttune did not restore the host"
    with idle_hosttune() as pid:
        result["idle"]["hosttune"] = measure_idle(pid, args.idle_s)
    with idle_tuned() as pid:
        result["idle"]["tuned"] = measure_idle(pid, args.idle_s)
    assert snapshot() == before
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    for name in ("tuned", "hosttune"):
        runs = result["apply"][name]
        med = sorted(r["applied_s"] for r in runs)[len(runs) // 2]
        idle = result["idle"][name]
        extra = ""
        if name == "hosttune":
            extra = f", READY (API up) median {sorted(r['ready_s'] for r in runs)[len(runs) // 2]:.2f} s"
        print(f"{name}: launch->applied median {med:.2f} s{extra}; idle {idle['cpu_pct_of_core']:.3f}% of a core, "
              f"RSS {idle['rss_mb']:.1f} MB (peak {idle['rss_peak_mb']:.1f})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_readonly_exec":
        _readonly_exec(sys.argv[2:])
    else:
        sys.exit(main())
