"""Policies submitted over the API (inline YAML or JSON), kept under STATE_DIR/api-policies/ once applied.

A body is validated from its text first (agent.policy.loader.load_policy_text): a bad or hostile one leaves
nothing on disk, and a plan never writes. An applied one is kept as request-<sha256[:16]>.yaml (0600) so the
applied state, drift re-apply and a reload name a file that exists; the directory holds the newest KEEP bodies,
never dropping the one currently applied.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from agent.fsio import atomic_write

SUBMITTED_DIR = "api-policies"
KEEP = 32


def inline_text(yaml_text: str | None, policy: dict[str, Any] | None) -> str:
    """The body as the YAML text the loader reads (a JSON object is dumped as YAML; the request
    schema bounded its depth and size, so the dump cannot recurse without end)."""
    if yaml_text is not None:
        return yaml_text
    return yaml.safe_dump(policy, sort_keys=False)


class SubmittedPolicies:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / SUBMITTED_DIR

    def path_for(self, text: str) -> Path:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self.dir / f"request-{digest}.yaml"

    def contains(self, path: Path | str) -> bool:
        return Path(path).parent == self.dir

    def keep(self, path: Path, text: str) -> bool:
        """Write the body (or refresh its age when the same body is kept already); True when newly written."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.is_file():
            os.utime(path)
            return False
        atomic_write(path, text)
        return True

    def forget(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    def prune(self, protect: Iterable[Path | str | None]) -> list[Path]:
        """Drop all but the newest KEEP bodies, never one named in `protect`; returns what was dropped."""
        keep = {Path(p) for p in protect if p is not None}
        try:
            files = [p for p in self.dir.iterdir() if p.name.startswith("request-") and p.suffix == ".yaml"]
        except OSError:
            return []
        files.sort(key=_mtime, reverse=True)
        dropped = [p for p in files[KEEP:] if p not in keep]
        for p in dropped:
            self.forget(p)
        return dropped


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
