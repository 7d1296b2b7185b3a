"""The repository's .gitignore: a virtual environment is never committed, whether `.venv` is a directory or a
symlink to a shared one (`.venv/` alone matches only a directory)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.process  # runs git check-ignore
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("path", [".venv", ".venv/bin/python"])
def test_a_venv_symlink_or_directory_is_ignored(path: str) -> None:
    # --no-index: decide by the ignore rules alone; a path that does not exist counts as a file, like a symlink
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, capture_output=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, f"{path} is not ignored by .gitignore"
