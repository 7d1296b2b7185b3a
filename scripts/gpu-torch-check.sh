#!/usr/bin/env bash
# The torch worker on a real NVIDIA GPU: CUDA, bf16, the batch-1 equality check against transformers' greedy
# generate() (same device, same dtype) and a short throughput run (worker vs generate() at batch 1/4/16/64),
# printed as tables. It only runs models with torch: it never changes clocks, power limits, persistence, compute
# mode or MIG, and never resets a GPU.
#
# usage: scripts/gpu-torch-check.sh [--model default|PATH] [--dtype bf16] [--new-tokens 64] [--batches 1,4,16,64]
# Needs the torch extra (`make setup`, or PYTHON=... with torch, transformers, accelerate, gguf importable).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
exec "$PY" scripts/gpu_torch_check.py "$@"
