"""The hostile-policy corpus: every tests/fixtures/hostile-policies/*.yaml is refused, writes nothing, and says why.

One hostile policy per file. Headers (comment lines at the top, any order after the first):
    # expect: <a substring of the error message>      (required, first line)
    # via: api | cli                                   (optional: only that channel; default both)
`via: api` is for what only an inline body may not do (extend by path, name a binary): the same file on the
search path is root's own and allowed. Unknown headers are ignored, so other slices can add files freely.

Channels:
- cli: `hosttune plan FILE` and `hosttune apply FILE` as a subprocess on a copy of a committed fixture host:
  exit 2, stderr names FILE:LINE and the expected words, the host tree byte-identical afterwards.
- api: POST /v1/plan and /v1/apply with the file's text as `yaml:` (TestClient): 4xx, the detail has the
  expected words, the host tree byte-identical, nothing left under STATE_DIR/api-policies/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.daemon.submitted import SUBMITTED_DIR
from agent.hostfs import HostPaths
from tests.support.daemon_fixtures import MainThreadClient, main_thread_client, settings_for
from tests.support.trees import FIXTURE_HOSTS, make_tree, tree_state

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "hostile-policies"
FILES = sorted(CORPUS.glob("*.yaml")) if CORPUS.is_dir() else []
SCENARIO = "vm-1node"
HEADER = re.compile(r"^#\s*([a-z_]+)\s*:\s*(.*?)\s*$")
CLI_SECONDS = 5.0  # each run takes about a second; the bound only catches a hang or a huge read


@dataclass(frozen=True)
class Hostile:
    path: Path
    expect: str
    channels: frozenset[str]


def parse(path: Path) -> Hostile:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    headers: dict[str, str] = {}
    for line in lines:
        m = HEADER.match(line)
        if not m:
            break
        headers.setdefault(m.group(1), m.group(2))
    expect = headers.get("expect", "")
    assert lines and lines[0].startswith("# expect:") and expect, \
        f"{path.name}: the first line must be `# expect: <substring of the error>`"
    via = headers.get("via", "both")
    assert via in ("api", "cli", "both"), f"{path.name}: `# via:` takes api or cli, not {via!r}"
    return Hostile(path, expect, frozenset({"api", "cli"} if via == "both" else {via}))


def cases(channel: str) -> list[pytest.param]:  # type: ignore[valid-type]
    out = []
    for path in FILES:
        try:
            hostile = parse(path)
        except AssertionError:
            out.append(pytest.param(path, id=path.name))  # parse() fails again in the test, with the reason
            continue
        if channel in hostile.channels:
            out.append(pytest.param(path, id=path.name))
    return out


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    if not (FIXTURE_HOSTS / SCENARIO).is_dir():
        pytest.skip(f"committed fixture host {SCENARIO} is missing")
    return make_tree(SCENARIO, tmp_path / "host")


@pytest.fixture
def nvml_sim(tmp_path: Path) -> Path:
    """The scenario's NVML description, outside the hashed tree."""
    sim = tmp_path / "nvml.json"
    shutil.copy(FIXTURE_HOSTS / SCENARIO / "nvml.json", sim)
    return sim


def test_the_corpus_exists_and_every_file_has_an_expectation() -> None:
    assert FILES, f"no hostile policies under {CORPUS}"
    for path in FILES:
        parse(path)


@pytest.mark.parametrize("path", cases("cli"))
@pytest.mark.parametrize("command", ["plan", "apply"])
@pytest.mark.process
def test_cli_refuses(path: Path, command: str, host: HostPaths, nvml_sim: Path, tmp_path: Path) -> None:
    hostile = parse(path)
    root = host.procfs.parent
    before = tree_state(root)
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "agent", command, str(path), "--procfs", str(host.procfs), "--sysfs",
            str(host.sysfs), "--rootfs", str(host.rootfs), "--state-dir", str(state), "--nvml-sim", str(nvml_sim)]
    env = {**os.environ, "HOSTTUNE_STATE_DIR": str(state)}
    started = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    elapsed = time.monotonic() - started
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    assert re.search(re.escape(str(path)) + r":\d+", r.stderr), f"no {path}:LINE in: {r.stderr[-2000:]}"
    assert hostile.expect in r.stderr, f"{hostile.expect!r} not in: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr
    assert tree_state(root) == before, "the host tree changed"
    assert elapsed < CLI_SECONDS, f"took {elapsed:.1f}s"


@pytest.fixture
def client(host: HostPaths, nvml_sim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[MainThreadClient]:
    for name in list(os.environ):
        if name.startswith("HOSTTUNE_"):
            monkeypatch.delenv(name)
    settings = settings_for(host, tmp_path, nvml_sim=nvml_sim, api={"max_body_bytes": 4 << 20})
    with main_thread_client(settings) as c:
        yield c


@pytest.mark.parametrize("path", cases("api"))
def test_api_refuses(path: Path, client: MainThreadClient, host: HostPaths, tmp_path: Path) -> None:
    hostile = parse(path)
    root = host.procfs.parent
    before = tree_state(root)
    body = {"yaml": path.read_text(encoding="utf-8")}
    for route in ("/v1/plan", "/v1/apply"):
        r = client.post(route, json=body)
        assert 400 <= r.status_code < 500, f"{route}: {r.status_code} {r.text[:2000]}"
        assert hostile.expect in r.json()["detail"], f"{route}: {r.text[:2000]}"
        assert tree_state(root) == before, f"{route} changed the host tree"
        kept = tmp_path / "state" / SUBMITTED_DIR
        assert not kept.is_dir() or not any(kept.iterdir()), f"{route} left {sorted(kept.iterdir())}"
