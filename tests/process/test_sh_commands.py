"""One-shot external commands through `sh`: `llama-server --version` and install-unit's systemctl calls, with sh's
error objects (ErrorReturnCode, CommandNotFound, TimeoutException, ForkException) turned into hosttune's errors.
Fake tools are small shell scripts in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.commands import install_unit
from agent.errors import HostError, InputError
from agent.worker import llamacpp_bin
from agent.worker.llamacpp_bin import LlamaServerBinary


def tool(tmp_path: Path, body: str, name: str = "llama-server") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_version_line_from_either_stream(tmp_path: Path) -> None:
    path = tool(tmp_path, 'echo "load_backend: loaded CPU backend" >&2; echo "version: 4242 (abc123)" >&2')
    assert llamacpp_bin.check(LlamaServerBinary(path=path, lib_dir=None)) == "version: 4242 (abc123)"


def test_lib_dir_reaches_the_tool(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    path = tool(tmp_path, 'echo "version: $LD_LIBRARY_PATH"')
    assert llamacpp_bin.check(LlamaServerBinary(path=path, lib_dir=lib)).startswith(f"version: {lib}")


def test_nonzero_exit_is_a_clear_input_error(tmp_path: Path) -> None:
    path = tool(tmp_path, 'echo "error while loading shared libraries: libllama.so" >&2; exit 127')
    with pytest.raises(InputError, match=r"--version failed \(127\): .*libllama.so") as e:
        llamacpp_bin.check(LlamaServerBinary(path=path, lib_dir=None))
    assert str(e.value.path) == str(path)


def test_hanging_tool_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llamacpp_bin, "VERSION_TIMEOUT_S", 0.3)
    path = tool(tmp_path, "exec sleep 30")
    with pytest.raises(InputError, match="does not run: no answer to --version"):
        llamacpp_bin.check(LlamaServerBinary(path=path, lib_dir=None))


def test_not_a_program_does_not_run(tmp_path: Path) -> None:
    path = tmp_path / "llama-server"
    path.write_bytes(b"\x7fELF not really")
    path.chmod(0o755)
    with pytest.raises(InputError, match=r"does not run: .*[Ee]xec format"):
        llamacpp_bin.check(LlamaServerBinary(path=path, lib_dir=None))


def test_not_executable_does_not_run(tmp_path: Path) -> None:
    path = tool(tmp_path, "echo version: 1")
    path.chmod(0o644)
    with pytest.raises(InputError, match="does not run: not an executable file"):
        llamacpp_bin.check(LlamaServerBinary(path=path, lib_dir=None))


def test_systemctl_missing_is_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    install_unit._run([str(tmp_path / "no-systemctl"), "daemon-reload"])
    assert "not found, skipped" in capsys.readouterr().err


def test_systemctl_failure_says_why(tmp_path: Path) -> None:
    systemctl = tool(tmp_path, 'echo "Failed to connect to bus: No such file" >&2; exit 1', "systemctl")
    with pytest.raises(HostError, match=r"daemon-reload failed: Failed to connect to bus"):
        install_unit._run([str(systemctl), "daemon-reload"])


def test_systemctl_success_is_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    systemctl = tool(tmp_path, 'echo "Created symlink" >&2', "systemctl")
    install_unit._run([str(systemctl), "enable", "--now", "hosttune.service"])
    assert capsys.readouterr() == ("", "")


def test_systemctl_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install_unit, "SYSTEMCTL_TIMEOUT_S", 0.3)
    systemctl = tool(tmp_path, "exec sleep 30", "systemctl")
    with pytest.raises(HostError, match="timed out"):
        install_unit._run([str(systemctl), "daemon-reload"])
