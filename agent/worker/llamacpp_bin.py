"""Find the real llama-server: configured path, then the one the llama-cpp-python wheel put in this Python's
site-packages (bin/, with its shared libraries in lib/ and no RPATH), then PATH.

`python -m agent.worker.llamacpp_bin --check` exits 0 when a working llama-server is found (used by set-up).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import sh

from agent.errors import InputError

ENV_LLAMA_SERVER = "HOSTTUNE_LLAMA_SERVER"
VERSION_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class LlamaServerBinary:
    path: Path
    lib_dir: Path | None

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment that lets the binary find its shared libraries."""
        env = dict(os.environ if base is None else base)
        if self.lib_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(self.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
        return env


def _wheel_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def _binary_at(path: Path) -> LlamaServerBinary:
    lib = path.parent.parent / "lib"
    return LlamaServerBinary(path=path, lib_dir=lib if lib.is_dir() else None)


def find_tool(name: str, configured: str | None = None) -> LlamaServerBinary:
    """Locate llama-server (or llama-bench, ...) or raise InputError saying where we looked."""
    candidates: list[Path] = []
    explicit = configured or (os.environ.get(ENV_LLAMA_SERVER) if name == "llama-server" else None)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise InputError(f"{name} is not an executable file", path=path)
        return _binary_at(path)
    site = _wheel_dir()
    if site is not None:
        candidates.append(site / "bin" / name)
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return _binary_at(c)
    looked = ", ".join(str(c) for c in candidates) or "no llama_cpp package, not on PATH"
    raise InputError(f"{name} not found (looked at: {looked}); run `make setup` or set {ENV_LLAMA_SERVER}")


def find_llama_server(configured: str | None = None) -> LlamaServerBinary:
    return find_tool("llama-server", configured)


def _said(stdout: bytes, stderr: bytes) -> str:
    return (stdout.decode(errors="replace") + stderr.decode(errors="replace")).strip()


def check(binary: LlamaServerBinary) -> str:
    """Run `llama-server --version` (one-shot, through `sh`); return its version line or raise InputError."""
    try:
        done = sh.Command(str(binary.path))("--version", _env=binary.env(), _timeout=VERSION_TIMEOUT_S,
                                            _tty_out=False, _return_cmd=True)
    except sh.ErrorReturnCode as e:
        raise InputError(f"llama-server --version failed ({e.exit_code}): {_said(e.stdout, e.stderr)[-200:]}",
                         path=binary.path) from None
    except sh.TimeoutException:
        raise InputError(f"llama-server does not run: no answer to --version within {VERSION_TIMEOUT_S:.0f} s",
                         path=binary.path) from None
    except sh.CommandNotFound as e:
        raise InputError(f"llama-server does not run: not an executable file ({e})", path=binary.path) from None
    except sh.ForkException as e:
        raise InputError(f"llama-server does not run: {str(e).strip().splitlines()[-1].strip()}",
                         path=binary.path) from None
    text = _said(done.stdout, done.stderr)
    return next((line for line in text.splitlines() if "version" in line), text.splitlines()[0] if text else "")


def main(argv: list[str]) -> int:
    try:
        binary = find_llama_server()
        version = check(binary)
    except InputError as e:
        print(f"llama-server: {e}", file=sys.stderr)
        return 1
    print(f"{binary.path}: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
