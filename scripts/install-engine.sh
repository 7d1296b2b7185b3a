#!/usr/bin/env bash
# Install llama-server (from the cached llama-cpp-python wheel, built once) into the venv. Idempotent:
# a working llama-server in the venv is left alone.
set -euo pipefail
PY=${1:-.venv/bin/python}
if "$PY" -m agent.worker.llamacpp_bin --check >/dev/null 2>&1; then
  exit 0
fi
wheel=$(scripts/build-engine.sh "$PY")
"$PY" -m pip install -q --no-deps --force-reinstall "$wheel"
"$PY" -m agent.worker.llamacpp_bin --check
