"""WorkerStack._stage_weights: when the launch on the staged copy cannot even be built, the worker goes back to
the page cache for good: the staged path is forgotten and the copy unstaged (H2)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.daemon.worker_stack import WorkerStack
from agent.errors import InputError
from agent.policy.model import WorkerSpec
from agent.tunable import weights_pool


class FakeTuning:
    paths = None

    def __init__(self, staged: Path) -> None:
        self.staged, self.calls = staged, []  # type: list[str]

    def stage_weights(self, spec: WorkerSpec, model: Path, run_as: object) -> Path:
        self.calls.append("stage")
        return self.staged

    def unstage_weights(self) -> list[str]:
        self.calls.append("unstage")
        return []


class FakePrepared:
    def __init__(self, model: Path) -> None:
        self.spec = WorkerSpec(model=str(model), weights={"backing": "hugetlbfs"})  # type: ignore[arg-type]
        self.model, self.run_as = model, None
        self.staged_model: Path | None = None

    def build(self, spec: WorkerSpec) -> Any:
        if self.staged_model is not None:
            raise InputError("the worker cannot read the staged copy", field="worker.model")
        return "launch"


def test_a_build_failing_after_staging_unstages_and_launches_from_the_page_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_pool, "weights_pool_blocker", lambda *a: None)
    stack = object.__new__(WorkerStack)
    tuning = FakeTuning(tmp_path / "hugetlb/model.gguf")
    events: list[tuple[str, dict[str, object]]] = []
    stack.tuning = tuning  # type: ignore[assignment]
    stack.events = SimpleNamespace(record=lambda kind, **kw: events.append((kind, kw)))  # type: ignore[assignment]
    prepared = FakePrepared(tmp_path / "m.gguf")
    loaded = SimpleNamespace(policy=SimpleNamespace(hugepages=[SimpleNamespace(for_weights=True)]))
    stack._stage_weights(loaded, prepared, None)  # type: ignore[arg-type]
    assert prepared.staged_model is None and tuning.calls == ["stage", "unstage"]
    assert prepared.build(prepared.spec) == "launch"
    assert events and events[0][0] == "weights_not_staged" and "staged copy" in str(events[0][1]["reason"])
