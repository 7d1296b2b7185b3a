"""The daemon's own state as Prometheus series: what runs (build, policy, worker knobs), what it promised (the
policy's SLO, the hugepages it holds), whether the host still matches (drift, last apply) and what the controller did.

Telemetry must not import the daemon (docs/architecture.md, LAYERS): the daemon hands this part a callable that
returns a `DaemonState` snapshot of plain values, read at each scrape (the facts change rarely and cost nothing to
read, so they are not kept in the 1 Hz ring). Label values are hostile (a policy or model name comes from a file or
an API body): every one goes through `label_value` (non-printable characters replaced, at most LABEL_MAX
characters) and then the exposition's escaping; the label sets are fixed here, and knob names are the controller's
known ones (the daemon filters them; `knob_name` refuses any other shape).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.metrics.prom import MetricFamily

log = logging.getLogger(__name__)
LABEL_MAX = 128
MAX_KNOBS = 32
_KNOB_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
WORKER_INFO_LABELS = ("engine", "model", "slots", "ctx_size", "batch_size", "ubatch_size", "cache_type_k",
                      "cache_type_v")


def label_value(value: object) -> str:
    """A label value from anything: "" for None, non-printable characters as '?', at most LABEL_MAX characters."""
    if value is None:
        return ""
    text = str(value)[:LABEL_MAX]
    return "".join(c if c.isprintable() else "?" for c in text)


def knob_name(name: str) -> str | None:
    """A controller knob name as a label value, or None when it is not shaped like one."""
    return name if _KNOB_RE.match(name) else None


@dataclass(frozen=True)
class PolicyState:
    """The policy the daemon applied last (and has not reverted)."""

    name: str
    digest: str                                    # first 12 hex of the sha256 of the policy file as applied
    slo_seconds: Mapping[str, float] = field(default_factory=dict)       # "ttft_p95" / "itl_p95" -> seconds
    hugepages_bytes: Mapping[str, int] = field(default_factory=dict)     # "2M" / "1G" -> bytes the policy holds


@dataclass(frozen=True)
class WorkerInfo:
    """The running worker's engine, model and knobs in force (None: unknown, exported as "")."""

    engine: str
    model: str
    slots: int | None = None
    ctx_size: int | None = None
    batch_size: int | None = None
    ubatch_size: int | None = None
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    restarts: int = 0
    crashes: int = 0      # of those restarts, the ones after the worker crashed


@dataclass(frozen=True)
class DaemonState:
    version: str
    policy: PolicyState | None = None
    last_apply_at: float | None = None
    last_apply_ok: bool | None = None
    drift_checked_at: float | None = None
    drift_targets: int | None = None
    worker: WorkerInfo | None = None
    decisions: Mapping[tuple[str, str], int] = field(default_factory=dict)   # (lever, action) -> count
    knobs: Mapping[str, float] | None = None       # None: no controller runs


def _gauge(name: str, help: str) -> MetricFamily:
    return MetricFamily(name, "gauge", help)


def _worker_families(w: WorkerInfo) -> list[MetricFamily]:
    values = (w.engine, w.model, w.slots, w.ctx_size, w.batch_size, w.ubatch_size, w.cache_type_k, w.cache_type_v)
    info = _gauge("hosttune_worker_info", "The running worker: engine, model and the knobs in force (\"\" where "
                  "unknown); always 1.")
    info.add(1, {k: label_value(v) for k, v in zip(WORKER_INFO_LABELS, values, strict=True)})
    restarts = MetricFamily("hosttune_worker_restarts_total", "counter",
                            "Worker restarts by its supervisor (crashes, knob changes, API restarts).")
    crashes = MetricFamily("hosttune_worker_crashes_total", "counter",
                           "Worker crashes seen by its supervisor (exits it did not ask for); what a crash-loop "
                           "alert counts, unlike restarts.")
    return [info, restarts.add(w.restarts), crashes.add(w.crashes)]


def _policy_families(p: PolicyState) -> list[MetricFamily]:
    info = _gauge("hosttune_policy_info", "The applied policy: its name and the first 12 hex digits of the "
                  "sha256 of its file as applied; always 1.")
    info.add(1, {"policy": label_value(p.name), "digest": label_value(p.digest)})
    slo = _gauge("hosttune_policy_slo_seconds", "The applied policy's SLO targets (absent when unset).")
    for name in ("ttft_p95", "itl_p95"):
        slo.add(p.slo_seconds.get(name), {"slo": name})
    pages = _gauge("hosttune_hugepages_reserved_bytes", "Hugepage pools the applied policy holds through "
                   "hosttune, by page size (bytes).")
    for size in ("2M", "1G"):
        pages.add(p.hugepages_bytes.get(size), {"size": size})
    return [info, slo, pages]


def _controller_families(s: DaemonState) -> list[MetricFamily]:
    decisions = MetricFamily("hosttune_controller_decisions_total", "counter",
                             "Controller decisions taken since the daemon started, by lever and action.")
    for (lever, action), n in sorted(s.decisions.items()):
        decisions.add(n, {"lever": label_value(lever), "action": label_value(action)})
    out = [decisions]
    if s.knobs is not None:
        knob = _gauge("hosttune_controller_knob", "The value of each numeric engine knob the controller holds in "
                      "force now.")
        for name, value in sorted(s.knobs.items())[:MAX_KNOBS]:
            label = knob_name(name)
            if label is not None:
                knob.add(value, {"knob": label})
        out.append(knob)
    return out


def daemon_families(s: DaemonState) -> list[MetricFamily]:
    fams = [_gauge("hosttune_build_info", "The hosttune version running; always 1.")
            .add(1, {"version": label_value(s.version)})]
    if s.policy is not None:
        fams += _policy_families(s.policy)
    fams.append(_gauge("hosttune_last_apply_timestamp_seconds", "When the daemon last applied a policy (Unix "
                       "time).").add(s.last_apply_at))
    fams.append(_gauge("hosttune_last_apply_success", "1 if the daemon's last apply succeeded, 0 if it failed.")
                .add(None if s.last_apply_ok is None else int(s.last_apply_ok)))
    fams.append(_gauge("hosttune_drift_targets", "Targets not matching the applied policy at the last drift "
                       "check.").add(s.drift_targets))
    fams.append(_gauge("hosttune_last_drift_check_timestamp_seconds", "When the last drift check ran (Unix "
                       "time).").add(s.drift_checked_at))
    if s.worker is not None:
        fams += _worker_families(s.worker)
    fams += _controller_families(s)
    return [f for f in fams if f.samples]


class DaemonStatePart:
    """A telemetry part (Telemetry.parts): the daemon's state, read from `read` at each exposition. A read that
    fails is logged and leaves these series out of that scrape, never the host, worker or gateway series."""

    name = "daemon"

    def __init__(self, read: Callable[[], DaemonState]) -> None:
        self.read = read

    def families(self) -> list[MetricFamily]:
        try:
            return daemon_families(self.read())
        except Exception as e:  # contained like a sampler: the rest of /metrics still answers
            log.warning("daemon state series left out of this scrape: %s", e)
            return []
