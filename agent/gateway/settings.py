"""Gateway settings: admission, hold and timeout knobs, validated (a zero limit or a negative timeout would make
every request fail or wait forever, so they are refused up front)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(4, ge=1, description="most requests in flight to the worker (the controller moves this)")
    max_queue: int = Field(128, ge=0, description="most requests waiting for admission; more get 503 at once")
    queue_timeout_s: float = Field(30.0, gt=0, description="longest wait for admission and for a restarting "
                                   "worker, then 503 + Retry-After")
    retry_after_s: int = Field(2, ge=1, description="Retry-After on 503 replies")
    retry_before_first_byte: bool = Field(True, description="retry once, after the worker is ready again, a "
                                          "request that failed before any byte reached the client")
    connect_timeout_s: float = Field(2.0, gt=0)
    read_timeout_s: float = Field(300.0, gt=0, description="longest silence from the worker while it answers")
    window_s: float = Field(60.0, gt=0, description="sliding window of the latency percentiles")
    max_body_bytes: int = Field(32 << 20, ge=1024, description="largest request body passed on (413 above it)")
    body_timeout_s: float = Field(30.0, gt=0, description="longest wait for an admitted request's body (408 "
                                  "after it): a slow sender holds an admission slot no longer")
