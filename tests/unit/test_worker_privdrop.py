"""The worker runs unprivileged: the launch carries the drop to the worker user (every binding mechanism), the
environment is exactly the allow-list, the user is resolved (fallback, refusals), and a model that user cannot
read is refused before any start. The real process is checked in tests/kernel/test_worker_privdrop_real.py."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import DaemonSettings
from agent.errors import InputError
from agent.policy.model import WorkerSpec
from agent.worker import privdrop
from agent.worker.binding import plan_binding
from agent.worker.engines import CommandEngine, LlamaCppEngine
from agent.worker.llamacpp_bin import LlamaServerBinary
from agent.worker.placement import Placement
from agent.worker.prepare import prepare_worker
from agent.worker.privdrop import ENV_KEYS, RunAs, check_readable, resolve_run_as, worker_env
from agent.worker.supervisor import RestartPolicy, Supervisor
from agent.worker.torch_engine import TorchEngine
from tests.support.worker_facts import one_node_vm

RUN_AS = RunAs(user="hosttune-worker", uid=4242, gid=4343)
BINARY = LlamaServerBinary(path=Path("/opt/llama/bin/llama-server"), lib_dir=Path("/opt/llama/lib"))
SECRETS = {"HOSTTUNE_TOKEN_FILE": "/var/lib/hosttune/api.token", "HOSTTUNE_CONFIG": "/etc/hosttune/daemon.yaml",
           "AWS_SECRET_ACCESS_KEY": "x", "http_proxy": "http://proxy:3128", "LD_PRELOAD": "/tmp/evil.so",
           "PYTHONSTARTUP": "/tmp/evil.py", "HOME": "/root", "NOTIFY_SOCKET": "/run/systemd/notify",
           "CREDENTIALS_DIRECTORY": "/run/credentials/hosttune.service"}
KEPT = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "4", "GOMP_CPU_AFFINITY": "0-3",
        "CUDA_VISIBLE_DEVICES": "GPU-1", "PYTHONPATH": "/srv/hosttune"}


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the worker user can enter (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="hosttune-privdrop-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def dirty_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        monkeypatch.delenv(k)
    for k, v in {**SECRETS, **KEPT}.items():
        monkeypatch.setenv(k, v)


def allowed(key: str) -> bool:
    return key in ENV_KEYS or key.startswith(("OMP_", "GOMP_"))


def test_worker_env_is_exactly_the_allow_list(dirty_env: None) -> None:
    assert worker_env() == KEPT
    assert worker_env({}) == {"PATH": privdrop.DEFAULT_PATH}
    assert worker_env({"HOSTTUNE_X": "1"}, TQDM_DISABLE="1") == {"PATH": privdrop.DEFAULT_PATH, "TQDM_DISABLE": "1"}


def test_every_engine_launches_with_the_scrubbed_environment(dirty_env: None, tmp_path: Path) -> None:
    llama = LlamaCppEngine(BINARY, parent_death_signal=None).launch(WorkerSpec(), Path("/m.gguf"), None)
    assert set(llama.env) == {*KEPT, "LD_LIBRARY_PATH"} and llama.env["LD_LIBRARY_PATH"] == "/opt/llama/lib"
    command = CommandEngine(parent_death_signal=None).launch(WorkerSpec(engine="command", argv=["srv"]), None, None)
    assert command.env == KEPT
    torch = TorchEngine(parent_death_signal=None, token_dir=tmp_path / "ctl").launch(
        WorkerSpec(engine="torch"), Path("/m.gguf"), None)
    assert set(torch.env) == {*KEPT, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE"}
    for launch in (llama, command, torch):
        assert all(allowed(k) or k in ("TQDM_DISABLE",) for k in launch.env)
        assert not set(launch.env) & set(SECRETS)


def uid_args(prefix: list[str]) -> tuple[str, str]:
    shim_end = prefix.index("--")
    head = prefix[:shim_end]
    assert head[:4] == [sys.executable, "-P", "-m", "agent.worker.bindexec"]
    return head[head.index("--uid") + 1], head[head.index("--gid") + 1]


@pytest.mark.parametrize("where", ["none", "bindexec", "numactl"])
def test_every_binding_mechanism_drops_to_the_worker_user(where: str) -> None:
    placed = None if where == "none" else Placement(node=0, cpus=[0], threads=1, membind=True)
    b = plan_binding(placed, prefer="numactl" if where == "numactl" else "bindexec",
                     numactl="/usr/bin/numactl" if where == "numactl" else None, run_as=RUN_AS)
    assert b.mechanism == where
    assert uid_args(b.prefix) == ("4242", "4343")
    if where == "numactl":  # the shim drops first, then execs numactl: numactl never runs as root
        assert b.prefix[b.prefix.index("--") + 1] == "/usr/bin/numactl"


def test_engines_carry_run_as_into_argv(tmp_path: Path) -> None:
    spec = WorkerSpec(engine="command", argv=["srv"])
    for launch in (LlamaCppEngine(BINARY, run_as=RUN_AS).launch(WorkerSpec(), Path("/m.gguf"), None),
                   CommandEngine(run_as=RUN_AS).launch(spec, None, None),
                   TorchEngine(token_dir=tmp_path / "ctl", run_as=None).launch(WorkerSpec(engine="torch"),
                                                                               Path("/m.gguf"), None)):
        if launch.engine == "torch":
            assert "--uid" not in launch.argv  # no run_as: nothing to drop (a daemon that is not root)
        else:
            assert uid_args(launch.argv) == ("4242", "4343")


def test_resolve_run_as(monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setattr(privdrop.os, "geteuid", lambda: 0)
    assert resolve_run_as("nobody") == RunAs("nobody", nobody.pw_uid, nobody.pw_gid)
    root = pwd.getpwnam("root")

    def only_nobody(name: str) -> pwd.struct_passwd:
        if name == "nobody":
            return nobody
        raise KeyError(name)

    monkeypatch.setattr(privdrop.pwd, "getpwnam", only_nobody)
    assert resolve_run_as().user == "nobody"  # the default user, not created on this machine: fall back
    with pytest.raises(InputError, match="does not exist") as err:
        resolve_run_as("someone-else")
    assert err.value.field == "worker.user"
    monkeypatch.setattr(privdrop.pwd, "getpwnam", lambda name: root)
    with pytest.raises(InputError, match="unprivileged"):
        resolve_run_as("daemon-alias")
    monkeypatch.setattr(privdrop.os, "geteuid", lambda: 1000)
    assert resolve_run_as("anything") is None  # not root: nothing to drop


def test_worker_user_config_field() -> None:
    assert DaemonSettings().worker.user == "hosttune-worker"
    for bad in ("--user", "a b", "Root", ""):
        with pytest.raises(ValidationError):
            DaemonSettings.model_validate({"worker": {"user": bad}})


def test_model_the_worker_user_cannot_read_is_refused(open_dir: Path) -> None:
    tmp_path = open_dir
    nobody = RunAs("nobody", 65534, 65534)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    os.chmod(model, 0o644)
    check_readable(model, nobody)
    check_readable(model, None)  # no drop: nothing to check
    os.chmod(model, 0o600)
    with pytest.raises(InputError, match=r"cannot read .*m\.gguf \(mode 0600") as err:
        check_readable(model, nobody)
    assert err.value.field == "worker.model"
    os.chmod(model, 0o644)
    os.chmod(tmp_path, 0o700)
    with pytest.raises(InputError, match="cannot enter"):
        check_readable(model, nobody)
    os.chmod(tmp_path, 0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="the owner-based check needs root to chown")
def test_model_owned_by_the_worker_user_is_readable(open_dir: Path) -> None:
    model = open_dir / "m.gguf"
    model.write_bytes(b"GGUF")
    os.chmod(model, 0o600)
    os.chown(model, 65534, 65534)
    check_readable(model, RunAs("nobody", 65534, 65534))


def test_unreadable_model_fails_the_worker_at_once_not_a_crash_loop(open_dir: Path) -> None:
    model = open_dir / "m.gguf"
    model.write_bytes(b"GGUF")
    os.chmod(model, 0o600)
    nobody = RunAs("nobody", 65534, 65534)
    spec = WorkerSpec(engine="command", argv=["/bin/true"], model=str(model))
    with pytest.raises(InputError, match="cannot read") as err:
        prepare_worker(spec, one_node_vm(), run_as=nobody)
    assert err.value.field == "worker.model"
    prepared = prepare_worker(spec, one_node_vm())  # the model became unreadable between prepare and start:
    prepared.run_as = nobody
    sup = Supervisor(spec, prepared.build, policy=RestartPolicy(backoff_initial_s=0.01))
    sup.start()
    try:
        assert sup.wait_for({"failed"}, timeout=30)
        st = sup.status()
        assert st.starts == 0 and st.crashes == 0 and "cannot read" in (st.reason or "")
    finally:
        sup.stop()


@pytest.mark.process
def test_shim_refuses_root_and_half_given_ids() -> None:
    for args in (["--uid", "0", "--gid", "0"], ["--uid", "65534"]):
        out = subprocess.run([sys.executable, "-m", "agent.worker.bindexec", *args, "--", "/bin/true"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0, args


def test_a_program_the_worker_user_cannot_run_is_refused_before_start(open_dir: Path) -> None:
    nobody = RunAs("nobody", 65534, 65534)
    hidden = open_dir / "private"
    hidden.mkdir(mode=0o700)
    server = hidden / "server"
    server.write_text("#!/bin/sh\nexit 0\n")
    server.chmod(0o755)
    spec = WorkerSpec(engine="command", argv=[str(server)])
    with pytest.raises(InputError, match=r"cannot enter .*private") as err:
        prepare_worker(spec, one_node_vm(), run_as=nobody).build(spec)
    assert err.value.field == "worker"
    hidden.chmod(0o755)
    server.chmod(0o744)
    with pytest.raises(InputError, match="cannot run"):
        prepare_worker(spec, one_node_vm(), run_as=nobody).build(spec)
    server.chmod(0o755)
    prepare_worker(spec, one_node_vm(), run_as=nobody).build(spec)
    bare = WorkerSpec(engine="command", argv=["sh", "-c", "true"])  # found on the worker's PATH: /bin/sh is fine
    prepare_worker(bare, one_node_vm(), run_as=nobody).build(bare)


def test_explicit_root_keeps_the_worker_privileged_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(privdrop.os, "geteuid", lambda: 0)
    assert resolve_run_as("root") is None
    assert "no drop" in caplog.text
