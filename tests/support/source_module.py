"""Import a Python file that is not in a package (an Ansible filter plugin, a bench/ script) by its path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible/roles/hosttune"


def load_source(name: str, path: Path, register: bool = False) -> ModuleType:
    """The module in `path` under `name`; `register` puts it in sys.modules first (dataclasses look their module
    up there while the file runs)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def role_filter(name: str) -> ModuleType:
    """One of the role's filter plugins (ansible/roles/hosttune/filter_plugins/NAME.py)."""
    return load_source(f"{name}_filter", ROLE / "filter_plugins" / f"{name}.py")
