"""The two arms of `hosttune bench --compare`, as real processes.

A (DefaultsArm): llama-server at its own defaults (`-m MODEL --host 127.0.0.1 --port P`, nothing else), started for
each round and stopped by PID; the host is whatever it was when the compare began (compare.py checks it).

B (DaemonArm): the real `hosttune daemon` (`python -m agent daemon --config FILE`, as `make run` runs it) with its
own state dir under the compare's work dir, free ports, `revert_on_stop: true` (it reverts the host on SIGTERM),
and a policy file written here that extends the policy under test with the model, a free worker port and, after
the converge phase, the engine knobs the controller settled on (and its admission limit in the daemon config), so
every measured B round serves the converged state from its first request.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.bench.compare import RoundLoad
from agent.bench.llama_local import LocalLlamaServer, die_with_parent, free_port
from agent.control.actuators import LLAMACPP_KNOBS
from agent.errors import HostError

KNOB_VALUE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
MAX_LIMIT = 4096


class DefaultsArm:
    def __init__(self, model: Path, work_dir: Path, ready_timeout_s: float = 300.0) -> None:
        self.model = model
        self.work_dir = work_dir
        self.ready_timeout_s = ready_timeout_s
        self.server: LocalLlamaServer | None = None
        self.starts = 0

    def start(self) -> str:
        self.starts += 1
        self.server = LocalLlamaServer(self.model, defaults=True,
                                       log_path=self.work_dir / f"llama-defaults-{self.starts}.log")
        return self.server.start(self.ready_timeout_s)

    def after_round(self) -> dict[str, Any]:
        return {"pid": self.server.pid if self.server else None}

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def describe(self) -> dict[str, Any]:
        argv = LocalLlamaServer(self.model, port=1, defaults=True).argv()
        return {"what": "llama-server at its defaults on the untouched host",
                "argv": [*argv[:-1], "PORT"], "model": str(self.model)}


def settled_knobs(status: dict[str, Any]) -> dict[str, int | str]:
    """The engine knobs a controller status stands on: its knobs, or a running trial's starting point. Only
    llama.cpp knob names with plain values pass (they go into a policy file)."""
    trial = status.get("trial")
    knobs = trial.get("from") if isinstance(trial, dict) and isinstance(trial.get("from"), dict) else \
        status.get("knobs")
    out: dict[str, int | str] = {}
    for name, value in (knobs or {}).items():
        if name not in LLAMACPP_KNOBS or value is None or isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, str) and KNOB_VALUE_RE.fullmatch(value)):
            out[name] = value
    return out


class DaemonArm:
    def __init__(self, policy_source: Path, policy_ref: str, model: Path, work_dir: Path,
                 ready_timeout_s: float = 300.0, stop_timeout_s: float = 120.0) -> None:
        self.policy_source = policy_source
        self.policy_ref = policy_ref
        self.model = model
        self.work_dir = work_dir
        self.state_dir = work_dir / "daemon-state"
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.knobs: dict[str, int | str] = {}
        self.limit: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_port = 0
        self.gateway_port = 0
        self.starts = 0

    # ----- files ----------------------------------------------------------------------------------------------
    def write_files(self) -> Path:
        """The derived policy and the daemon config for the next start (fresh ports each time)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        policy = {"name": "bench-compare-b", "extends": str(self.policy_source.resolve()),
                  "worker": {"model": str(self.model), "port": free_port(), **self.knobs}}
        policy_path = self.work_dir / "policy-b.yaml"
        policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
        self.api_port, self.gateway_port = free_port(), free_port()
        gateway: dict[str, Any] = {"port": self.gateway_port}
        if self.limit is not None:
            gateway["limit"] = max(1, min(MAX_LIMIT, self.limit))
        config = {"policy": str(policy_path), "state_dir": str(self.state_dir), "api": {"port": self.api_port},
                  "gateway": gateway, "revert_on_stop": True}
        config_path = self.work_dir / "daemon-b.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return config_path

    def argv(self, config: Path) -> list[str]:
        return [sys.executable, "-m", "agent", "daemon", "--config", str(config)]

    # ----- the process ----------------------------------------------------------------------------------------
    def start(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            raise HostError("the B arm's daemon is already running")
        config = self.write_files()
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOSTTUNE_", "NOTIFY_", "WATCHDOG_"))}
        log_path = self.work_dir / f"daemon-{self.starts}.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(config), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                         preexec_fn=die_with_parent)
        url = f"http://127.0.0.1:{self.gateway_port}"
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    self.proc = None
                    raise HostError(f"hosttune daemon exited with status {code} while starting (log: {log_path})")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url + "/health").status_code == 200:
                        return url
                if time.monotonic() > deadline:
                    self.stop()
                    raise HostError(f"hosttune daemon's worker not ready after {self.ready_timeout_s:g} s "
                                    f"(log: {log_path})")
                time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to the daemon's PID (it stops the worker and reverts the host), SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def controller(self) -> dict[str, Any]:
        token = (self.state_dir / "api.token").read_text().strip()
        r = httpx.get(f"http://127.0.0.1:{self.api_port}/v1/controller", timeout=10.0,
                      headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        reply: dict[str, Any] = r.json()
        return reply

    def after_round(self) -> dict[str, Any]:
        try:
            reply = self.controller()
        except (OSError, httpx.HTTPError) as e:
            return {"controller": f"unreadable: {type(e).__name__}: {e}"}
        if not reply.get("enabled"):
            return {"controller": f"not enabled: {reply.get('reason')}"}
        status = reply.get("status") or {}
        return {"knobs": status.get("knobs"), "limit": status.get("limit"), "phase": status.get("phase"),
                "converged": status.get("converged"), "decisions": len(reply.get("decisions") or [])}

    # ----- converge -------------------------------------------------------------------------------------------
    def converge(self, load: RoundLoad, timeout_s: float) -> dict[str, Any]:
        self.knobs, self.limit = {}, None
        if timeout_s <= 0:
            return {"converged": False, "timed_out": False, "knobs": {}, "limit": None,
                    "summary": "skipped (--converge-timeout 0): B serves the policy as written"}
        started = time.monotonic()
        url = self.start()
        reply: dict[str, Any] = {}
        chunks = 0
        try:
            while True:
                load(url)
                chunks += 1
                reply = self.controller()
                status = reply.get("status") or {}
                if not reply.get("enabled") or status.get("converged") or time.monotonic() - started >= timeout_s:
                    break
        finally:
            self.stop()
        status = reply.get("status") or {}
        converged = bool(status.get("converged"))
        if reply.get("enabled"):
            self.knobs = settled_knobs(status)
            limit = status.get("limit")
            self.limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
        decisions = [{k: d.get(k) for k in ("id", "lever", "action", "before", "after", "outcome", "outcome_reason")}
                     for d in reply.get("decisions") or [] if isinstance(d, dict)]
        if not reply.get("enabled"):
            summary = f"controller not enabled ({reply.get('reason')}): B serves the policy as written"
        else:
            what = "converged" if converged else f"timed out after {timeout_s:g} s (not converged)"
            summary = f"{what} on knobs {self.knobs or '(the policy as written)'}, admission limit {self.limit}"
        return {"converged": converged, "timed_out": bool(reply.get("enabled")) and not converged,
                "knobs": dict(self.knobs), "limit": self.limit, "load_rounds": chunks,
                "wall_s": round(time.monotonic() - started, 1), "phase": status.get("phase"),
                "slow_lever": status.get("slow_lever"), "decisions": decisions, "summary": summary}

    def describe(self) -> dict[str, Any]:
        return {"what": "hosttune daemon: the policy applied, its worker behind the gateway, the controller on",
                "policy": self.policy_ref, "policy_file": str(self.policy_source), "model": str(self.model),
                "pinned_knobs": dict(self.knobs), "gateway_limit": self.limit, "state_dir": str(self.state_dir)}
