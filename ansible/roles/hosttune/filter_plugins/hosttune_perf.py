"""Ansible filter: the rollout's performance gate, a verdict on a canary's figures before and after a new policy.

`before` and `after` are two replies of the host's GET /v1/performance (requests finished ok, failed,
rejected, ttft_p95_s, output_tokens_per_second, ...). The verdict is plain Python so it can be unit-tested
(tests/unit/test_rollout_perf_gate.py); tasks/rollout.yml fails the batch when `ok` is false, and the role's
rescue puts the host back on its previous policy.

    {{ before | hosttune_perf_verdict(after, min_requests=20, on_no_traffic='fail',
                                      ttft_max_increase_pct=25, tps_max_drop_pct=20,
                                      error_share_max_increase_pct=5) }}
    -> {"ok": false, "verdict": "worse", "msg": "p95 TTFT 0.41 s -> 1.90 s (+363%, tolerance +25%): ..."}

Traffic is every request that finished in the window: ok, failed (error/timeout) and rejected (admission). The
p95 TTFT and tokens/s come from the ok ones only, so a policy that makes requests fail is caught by the error
share, (failed + rejected) / traffic: the verdict is `worse` when the after share exceeds the before share by more
than error_share_max_increase_pct percentage points. That check runs whenever the after window saw any traffic,
whatever on_no_traffic says (a policy that makes every request fail is not "no traffic").

Verdicts: `skipped` (no worker served behind the gateway before the change: nothing to compare), `worse` (the error
share rose by more than its tolerance; or p95 TTFT rose or output tokens/s fell by more than its tolerance),
`no_traffic` (fewer than min_requests requests in either window: ok as on_no_traffic says), `ok`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

ON_NO_TRAFFIC = ("pass", "fail")


class PerfGateError(ValueError):
    pass


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool):
        raise PerfGateError(f"{name} must be a number, not a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PerfGateError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise PerfGateError(f"{name} must be within [{low:g}, {high:g}], got {number:g}")
    return number


def _figure(reply: Mapping[str, Any], key: str) -> float | None:
    value = reply.get(key)
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _change_pct(before: float | None, after: float | None) -> float | None:
    """Relative change in percent; None when either side is missing, inf when it grew from zero."""
    if before is None or after is None:
        return None
    if before == 0:
        return 0.0 if after == 0 else math.inf
    return (after - before) / before * 100


def _pct(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "+inf%" if math.isinf(value) else f"{value:+.0f}%"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _count(reply: Mapping[str, Any], key: str) -> int:
    value = reply.get(key)
    if value is None or isinstance(value, bool):
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PerfGateError(f"{key} in a /v1/performance reply must be a number, got {str(value)[:40]!r}") from None
    return int(number) if math.isfinite(number) and number > 0 else 0


def _traffic(reply: Mapping[str, Any]) -> tuple[int, int, int, float | None]:
    """(ok, failed, rejected, error share in percent; None without traffic)."""
    ok, failed, rejected = _count(reply, "requests"), _count(reply, "failed"), _count(reply, "rejected")
    total = ok + failed + rejected
    return ok, failed, rejected, (failed + rejected) / total * 100 if total else None


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def perf_verdict(before: Mapping[str, Any], after: Mapping[str, Any], min_requests: int = 20,
                 on_no_traffic: str = "fail", ttft_max_increase_pct: float = 25,
                 tps_max_drop_pct: float = 20, error_share_max_increase_pct: float = 5) -> dict[str, Any]:
    """The gate's verdict on two /v1/performance replies (see the module docstring)."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        raise PerfGateError("before and after must be /v1/performance replies (mappings)")
    min_req = int(_number(min_requests, "min_requests", 1, 1_000_000))
    ttft_tol = _number(ttft_max_increase_pct, "ttft_max_increase_pct", 0, 10_000)
    tps_tol = _number(tps_max_drop_pct, "tps_max_drop_pct", 0, 100)
    err_tol = _number(error_share_max_increase_pct, "error_share_max_increase_pct", 0, 100)
    if on_no_traffic not in ON_NO_TRAFFIC:
        raise PerfGateError(f"on_no_traffic must be one of {ON_NO_TRAFFIC}, got {str(on_no_traffic)[:40]!r}")
    ok_b, failed_b, rejected_b, share_b = _traffic(before)
    ok_a, failed_a, rejected_a, share_a = _traffic(after)
    n_before, n_after = ok_b + failed_b + rejected_b, ok_a + failed_a + rejected_a
    ttft = (_figure(before, "ttft_p95_s"), _figure(after, "ttft_p95_s"))
    tps = (_figure(before, "output_tokens_per_second"), _figure(after, "output_tokens_per_second"))
    figures = {"requests_before": n_before, "requests_after": n_after,
               "ok_before": ok_b, "ok_after": ok_a, "failed_before": failed_b, "failed_after": failed_a,
               "rejected_before": rejected_b, "rejected_after": rejected_a,
               "error_share_before_pct": share_b, "error_share_after_pct": share_a,
               "ttft_p95_before_s": ttft[0], "ttft_p95_after_s": ttft[1],
               "tokens_per_second_before": tps[0], "tokens_per_second_after": tps[1]}
    if not before.get("serving"):
        return {"ok": True, "verdict": "skipped", **figures,
                "msg": "no worker served behind the gateway before this policy: nothing to compare "
                       "(performance gate skipped)"}
    # No traffic before counts as no errors before: a policy must not fail requests either way.
    err_change = None if share_a is None else round(share_a - (share_b or 0.0), 6)  # no float noise at the bound
    err_worse = err_change is not None and err_change > err_tol
    ttft_change, tps_change = _change_pct(*ttft), _change_pct(*tps)
    ttft_worse = ttft_change is not None and ttft_change > ttft_tol
    tps_worse = tps_change is not None and -tps_change > tps_tol
    err_text = "n/a" if err_change is None else f"{err_change:+.1f} points"
    text = (f"p95 TTFT {_seconds(ttft[0])} -> {_seconds(ttft[1])} ({_pct(ttft_change)}, tolerance +{ttft_tol:g}%); "
            f"output {_rate(tps[0])} -> {_rate(tps[1])} tokens/s ({_pct(tps_change)}, tolerance -{tps_tol:g}%); "
            f"error share {_share(share_b)} -> {_share(share_a)} ({err_text}, tolerance +{err_tol:g} points); "
            f"{n_before} -> {n_after} requests (failed {failed_b} -> {failed_a}, rejected {rejected_b} -> "
            f"{rejected_a})")
    enough = n_before >= min_req and n_after >= min_req
    worse = [what for what, bad in (("p95 TTFT", enough and ttft_worse), ("tokens/s", enough and tps_worse),
                                    ("error share", err_worse)) if bad]
    if not enough and not err_worse:  # failing requests is never "no traffic", whatever on_no_traffic says
        ok = on_no_traffic == "pass"
        return {"ok": ok, "verdict": "no_traffic", **figures,
                "msg": f"not enough traffic to judge: {n_before} requests before, {n_after} after "
                       f"(need {min_req} in each window); hosttune_rollout_perf_on_no_traffic={on_no_traffic}: "
                       + ("passed with a warning" if ok else "failed")}
    if worse:
        return {"ok": False, "verdict": "worse", **figures,
                "msg": f"{text}: {' and '.join(worse)} worse than tolerated"}
    return {"ok": True, "verdict": "ok", **figures, "msg": f"{text}: within tolerance"}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"hosttune_perf_verdict": perf_verdict}
