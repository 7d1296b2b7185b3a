"""The controller's settings: the SLO it defends, the fast lever's AIMD constants, the slow lever's ladder, windows,
dead band and cooldown, and the fallback ladder for out-of-memory. Validated up front: a zero window or a negative
factor would make the control law divide by zero or never act, so they are refused here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.control.os_trials import OsTrial
from agent.errors import InputError
from agent.policy.model import SloSpec
from agent.worker.engines import LLAMACPP_AUTO_SLOTS

# What llama-server does with a knob left unset (llama.cpp's own defaults: -ub 512, -b 2048, -np -1 = auto,
# which serves 4 slots), so the ladder can step from "unset" to a neighbour.
LLAMACPP_DEFAULTS: dict[str, int | str] = {"parallel": LLAMACPP_AUTO_SLOTS, "ubatch": 512, "batch": 2048,
                                           "cache_type_k": "f16", "cache_type_v": "f16"}


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Axis(Model):
    """One engine knob the slow lever may move, and the values it may take, in increasing order."""

    knob: str
    values: list[int | str] = Field(min_length=2)


class Rung(Model):
    """One step down the out-of-memory fallback ladder.

    halve/scale: knob = max(minimum, floor(value * factor)); applies while the value is above `minimum`.
    set: the knobs in `values` take those values; applies while any differs (e.g. KV cache to q8_0)."""

    op: Literal["halve", "scale", "set"]
    knob: str | None = None
    factor: float = Field(0.5, gt=0, lt=1)
    minimum: int = Field(1, ge=0)
    values: dict[str, int | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> Rung:
        if self.op == "set" and not self.values:
            raise ValueError("a 'set' rung needs values")
        if self.op != "set" and not self.knob:
            raise ValueError(f"a '{self.op}' rung needs a knob")
        return self


# The KV cache type is a fallback rung, not a ladder axis: the ladder keeps a step only when tokens/s rise, and a
# q8_0 cache alone serves the same slots and context (llama-server splits -c across slots) while it adds the
# quantize/dequantize work to attention; what it buys is memory, which is what the fallback ladder spends.
LLAMACPP_LADDER = [Axis(knob="parallel", values=[1, 2, 4, 8, 16]), Axis(knob="ubatch", values=[128, 256, 512])]
LLAMACPP_FALLBACK = [
    Rung(op="halve", knob="parallel", minimum=1),
    Rung(op="halve", knob="ctx", minimum=512),
    Rung(op="set", values={"cache_type_k": "q8_0", "cache_type_v": "q8_0"}),
    Rung(op="scale", knob="gpu_layers", factor=0.75, minimum=0),
]


def threads_batch_axis(threads: int, cpus: int, most: int) -> Axis | None:
    """The threads_batch (prefill) rungs the slow lever may try: from the decode threads up to `most`, never past
    the worker's CPUs (more threads than CPUs only contend). Powers of two in between, so the walk up takes few
    restarts. None when there is nothing above `threads` to try."""
    top = min(most, cpus)
    if top <= threads:
        return None
    values = sorted({threads, top, *(1 << i for i in range(1, 13) if threads < 1 << i < top)})
    return Axis(knob="threads_batch", values=list(values))


TORCH_LADDER = [Axis(knob="max_batch", values=[1, 2, 4, 8, 16, 32, 64])]
TORCH_FALLBACK = [Rung(op="halve", knob="max_batch", minimum=1),
                  Rung(op="halve", knob="kv_budget_tokens", minimum=256)]


class ControllerConfig(Model):
    # objective
    ttft_p95_ms: float = Field(gt=0, description="p95 time to first token the controller defends")
    itl_p95_ms: float | None = Field(None, gt=0, description="p95 inter-token latency, when the policy sets one")
    memory_headroom_pct: float = Field(10.0, ge=0, le=90, description="floor on free host (and GPU) memory")
    interval_s: float = Field(2.0, gt=0, description="period of tick(): one APScheduler job")
    history_s: float = Field(900.0, gt=0, description="ticks kept for the measurement windows")

    # fast lever: admission limit, AIMD
    fast_enabled: bool = True
    min_limit: int = Field(1, ge=1)
    max_limit: int = Field(64, ge=1)
    fast_window_s: float = Field(15.0, gt=0, description="requests judged by the fast lever: those finished within "
                                 "this window and admitted after the last limit change")
    min_samples: int = Field(5, ge=1, description="fewest finished requests the fast lever acts on")
    increase_interval_s: float = Field(4.0, ge=0, description="least time between two increases")
    decrease_hold_s: float = Field(4.0, ge=0, description="least time between a change and a decrease")
    decrease_factor: float = Field(0.7, gt=0, lt=1, description="multiplicative decrease on an SLO breach")
    slo_dead_band_pct: float = Field(15.0, ge=0, lt=100, description="increase only while p95 is this far under the "
                                     "SLO: between the two the limit holds (no chattering at the edge)")
    probe_hold_s: float = Field(30.0, ge=0, description="after a breach at limit L, wait this long before trying L "
                                "again")

    # slow lever: engine knobs, one measured step at a time
    slow_enabled: bool = True
    ladder: list[Axis] = Field(default_factory=lambda: [a.model_copy() for a in LLAMACPP_LADDER])
    knob_defaults: dict[str, int | str] = Field(default_factory=lambda: dict(LLAMACPP_DEFAULTS),
                                                description="what the engine uses for a knob left unset")
    concurrency_knob: str | None = Field("parallel", description="knob whose ratio rescales the admission limit "
                                         "when it changes (slots: parallel; torch: max_batch)")
    measure_s: float = Field(30.0, gt=0, description="length of the before and after measurement windows")
    max_measure_s: float = Field(90.0, gt=0, description="an after-window with too few requests grows up to this")
    settle_s: float = Field(5.0, ge=0, description="after the worker is ready again, wait this long before "
                            "measuring (warm-up, the fast lever re-finding its limit)")
    min_requests: int = Field(10, ge=1, description="fewest finished requests in a window to judge a step")
    baseline_reuse_s: float = Field(120.0, ge=0, description="after a rollback, the baseline measured before the "
                                    "step is reused this long if knobs and admission limit are unchanged")
    min_saturation: float = Field(0.5, ge=0, le=1, description="share of baseline ticks with a non-empty queue "
                                  "before a step is tried: an idle engine's throughput is the offered load")
    dead_band_pct: float = Field(3.0, ge=0, description="a step is kept only if tokens/s rose at least this much; "
                                 "smaller differences are noise and the step is rolled back")
    slo_tolerance_pct: float = Field(10.0, ge=0, description="the after-window's p95 may exceed the SLO by this much")
    cooldown_s: float = Field(60.0, ge=0, description="least time between the end of one slow step and the next")
    tabu_s: float = Field(1800.0, ge=0, description="a step that did not pay is not retried for this long")
    ready_timeout_s: float = Field(300.0, gt=0, description="a worker not ready this long after a step is rolled "
                                   "back")
    reexplore_drift_pct: float = Field(20.0, gt=0, description="once every step is tabu, a throughput drift this "
                                       "large (the load changed) clears the tabu list")

    # out-of-memory fallback
    fallback: list[Rung] = Field(default_factory=lambda: [r.model_copy() for r in LLAMACPP_FALLBACK])
    fallback_hold_s: float = Field(15.0, ge=0, description="after a fallback, wait this long before another one "
                                   "for low headroom (memory takes time to be released)")

    # OS trials (agent/control/os_trials.py): tried like knob steps once no knob step is left
    os_trials: list[OsTrial] = Field(default_factory=list, description="OS levers the slow lever may try")

    max_decisions: int = Field(500, ge=1, description="decisions kept in memory (all go to the JSONL file)")

    @model_validator(mode="after")
    def _consistent(self) -> ControllerConfig:
        if self.min_limit > self.max_limit:
            raise ValueError("min_limit must not exceed max_limit")
        if self.max_measure_s < self.measure_s:
            raise ValueError("max_measure_s must be at least measure_s")
        knobs = [a.knob for a in self.ladder]
        if len(set(knobs)) != len(knobs):
            raise ValueError("a knob appears twice in the ladder")
        return self

    @property
    def ttft_slo_s(self) -> float:
        return self.ttft_p95_ms / 1000

    @property
    def itl_slo_s(self) -> float | None:
        return None if self.itl_p95_ms is None else self.itl_p95_ms / 1000


def config_for(engine: str, slo: SloSpec | None, **overrides: Any) -> ControllerConfig:
    """The controller settings for an engine and the policy's SLO. Without a TTFT SLO there is nothing to defend
    and no controller (InputError says so)."""
    if slo is None or slo.ttft_p95_ms is None:
        raise InputError("the controller needs slo.ttft_p95_ms in the policy", field="slo.ttft_p95_ms")
    base: dict[str, Any] = {"ttft_p95_ms": slo.ttft_p95_ms, "itl_p95_ms": slo.itl_p95_ms,
                            "memory_headroom_pct": slo.memory_headroom_pct}
    if engine == "torch":
        # Live levers: no restart, so shorter windows and cooldowns are enough to judge a step.
        base.update(ladder=[a.model_copy() for a in TORCH_LADDER], fallback=[r.model_copy() for r in TORCH_FALLBACK],
                    knob_defaults={}, concurrency_knob="max_batch", settle_s=2.0, measure_s=15.0, cooldown_s=15.0)
    base.update(overrides)
    return ControllerConfig.model_validate(base)
