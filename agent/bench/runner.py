"""Run a list of load levels against one target and collect the report (the engine behind `hosttune bench`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import platform
import random
from dataclasses import asdict
from typing import Any

import httpx
import psutil

from agent.bench.client import send
from agent.bench.corpus import MixSpec
from agent.bench.load import Bounds, LevelRun, Progress, Target, closed_loop, open_loop
from agent.bench.report import summarize_level
from agent.errors import HostError


def preflight(url: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one clear error when nothing listens at the URL (any HTTP answer will do)."""
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
    except httpx.HTTPError as e:
        raise HostError(f"cannot reach {url}: {type(e).__name__}: {e}") from None


async def _warmup(target: Target, mix: MixSpec, n: int, rng: random.Random) -> None:
    async with httpx.AsyncClient(timeout=target.timeout_s) as client:
        for _ in range(n):
            await send(client, target.url, target.api, mix.draw(rng), 0.0, target.model, target.ignore_eos)


async def run_levels(target: Target, mix: MixSpec, concurrency: list[int], rates: list[float], bounds: Bounds,
                     seed: int, warmup: int, progress: Progress, max_outstanding: int = 256) -> list[LevelRun]:
    runs: list[LevelRun] = []
    if warmup:
        await _warmup(target, mix, warmup, random.Random(seed - 1))
    for c in concurrency:
        runs.append(await closed_loop(target, mix, c, bounds, random.Random(seed), progress))
    for r in rates:
        runs.append(await open_loop(target, mix, r, bounds, random.Random(seed), progress, max_outstanding))
    return runs


def bench(target: Target, mix: MixSpec, concurrency: list[int], rates: list[float], bounds: Bounds,
          seed: int = 1, warmup: int = 1, progress: Progress | None = None) -> dict[str, Any]:
    """Run every level and return the JSON-able report."""
    started = dt.datetime.now(dt.UTC)
    runs = asyncio.run(run_levels(target, mix, concurrency, rates, bounds, seed, warmup,
                                  progress or Progress(enabled=False)))
    return {
        "started": started.isoformat(timespec="seconds"),
        "target": asdict(target),
        "mix": {"weights": mix.weights, "long_prompt_words": mix.long_prompt_words, "max_tokens": mix.max_tokens},
        "bounds": asdict(bounds),
        "seed": seed,
        "client_host": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
        "levels": [summarize_level(r) for r in runs],
    }
