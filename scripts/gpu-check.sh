#!/usr/bin/env bash
# Read-only GPU check for a real NVIDIA machine: hosttune's GPU inspection, a plan of every GPU setting, and a
# few telemetry samples, printed as tables. It never sets clocks, power limits, persistence or compute mode and
# never resets a GPU: NVML runs read-only (HOSTTUNE_NVML_DRY_RUN=1), the GPU tuner must refuse to apply, and a
# guard on pynvml's C-function lookup fails the check (exit 1) if any setter or reset was even looked up.
#
# usage: scripts/gpu-check.sh [--require-gpu] [--samples N] [--interval S] [--policy NAME] [--sim FILE]
#   --sim FILE   run against the C-level NVML simulator instead (e.g. tests/fixtures/hosts/server-2s-8gpu/nvml.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HOSTTUNE_NVML_DRY_RUN=1
exec "$PY" -m agent.commands.gpu_check "$@"
