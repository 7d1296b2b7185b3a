"""Run a list of load levels against one target and collect the report (the engine behind `hosttune bench`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import platform
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import psutil

from agent.bench.client import send
from agent.bench.corpus import MixSpec
from agent.bench.load import Bounds, LevelRun, Progress, RequestSource, Target, closed_loop, open_loop
from agent.bench.report import summarize_level
from agent.bench.requests_file import load_requests
from agent.bench.scenarios import SCENARIOS, file_level, scenario_level, source_of
from agent.errors import HostError


def preflight(url: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one clear error when nothing listens at the URL (any HTTP answer will do)."""
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
    except httpx.HTTPError as e:
        raise HostError(f"cannot reach {url}: {type(e).__name__}: {e}") from None


async def _warmup(target: Target, mix: RequestSource, n: int, rng: random.Random) -> None:
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
          seed: int = 1, warmup: int = 1, progress: Progress | None = None,
          slo: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
    """Run every level and return the JSON-able report (slo: TTFT and ITL SLOs in seconds, for goodput)."""
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
        "levels": [summarize_level(r, *slo) for r in runs],
    }


async def _scenario_levels(target: Target, scenario: str | None, requests_file: Path | None,
                           concurrency: list[int], rates: list[float], bounds: Bounds, seed: int, warmup: int,
                           progress: Progress) -> list[LevelRun]:
    levels: list[tuple[int | None, float | None]] = [(c, None) for c in concurrency] + [(None, r) for r in rates]
    runs: list[LevelRun] = []
    if requests_file is not None:
        replay = load_requests(requests_file)  # the whole file is checked before anything is sent
        if warmup:
            await _warmup(target, replay.source(), min(warmup, len(replay.requests)), random.Random(seed - 1))
        for c, r in levels or [(None, None)]:
            runs.append(await file_level(target, replay, seed=seed, duration_s=bounds.duration_s, concurrency=c,
                                         rate=r, progress=progress))
        return runs
    if scenario is None:
        raise ValueError("give a scenario or a requests file")
    if warmup:
        await _warmup(target, source_of(scenario), warmup, random.Random(seed - 1))
    for c, r in levels or [(None, None)]:
        runs.append(await scenario_level(target, scenario, seed=seed, duration_s=bounds.duration_s or 30.0,
                                         concurrency=c, rate=r, progress=progress, requests=bounds.requests))
    return runs


def bench_scenario(target: Target, scenario: str | None, requests_file: Path | None, concurrency: list[int],
                   rates: list[float], bounds: Bounds, seed: int = 1, warmup: int = 1,
                   progress: Progress | None = None,
                   slo: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
    """`--scenario NAME` or `--requests FILE.jsonl`: one level per given concurrency/rate, else the scenario's
    (or the file's) own shape; the JSON-able report."""
    started = dt.datetime.now(dt.UTC)
    runs = asyncio.run(_scenario_levels(target, scenario, requests_file, concurrency, rates, bounds, seed, warmup,
                                        progress or Progress(enabled=False)))
    about = (asdict(SCENARIOS[scenario]) if scenario else {"name": "requests-file", "path": str(requests_file)})
    return {
        "started": started.isoformat(timespec="seconds"),
        "target": asdict(target),
        "scenario": about,
        "bounds": asdict(bounds),
        "seed": seed,
        "slo": {"ttft_s": slo[0], "itl_s": slo[1]},
        "client_host": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
        "levels": [summarize_level(r, *slo) for r in runs],
    }
