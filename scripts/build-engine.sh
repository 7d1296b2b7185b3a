#!/usr/bin/env bash
# Build llama.cpp's llama-server from the PyPI llama-cpp-python sdist, once, into a cache keyed by version.
# The wheel carries bin/llama-server (+ llama-bench, llama-batched-bench) and lib/*.so.
# Usage: scripts/build-engine.sh PYTHON   (prints the path of the cached wheel)
set -euo pipefail
PY=${1:-python3}
VERSION=${HOSTTUNE_LLAMA_CPP_VERSION:-0.3.36}
CACHE=${HOSTTUNE_CACHE:-$HOME/.cache/hosttune}
CMAKE_FLAGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_TOOLS_INSTALL=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
KEY=$(printf '%s %s %s' "$VERSION" "$CMAKE_FLAGS" "$("$PY" -c 'import sys;print(sys.implementation.cache_tag)')" | sha256sum | cut -c1-12)
DIR="$CACHE/engine/llama-cpp-python-$VERSION-$KEY"
wheel=$(ls "$DIR"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
has_server() { unzip -Z1 "$1" 2>/dev/null | grep 'bin/llama-server$' >/dev/null; }
if [ -n "$wheel" ] && has_server "$wheel"; then
  echo "$wheel"; exit 0
fi
echo "building llama-server from llama-cpp-python==$VERSION (about 5 minutes on 2 cores) into $DIR" >&2
tmp=$(mktemp -d "$CACHE/engine/.build.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE/engine"; mktemp -d "$CACHE/engine/.build.XXXXXX"; })
trap 'rm -rf "$tmp"' EXIT
CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  "$PY" -m pip wheel --no-deps --no-cache-dir -w "$tmp" "llama-cpp-python==$VERSION" >&2
wheel=$(ls "$tmp"/llama_cpp_python-*.whl | head -n1)
if ! has_server "$wheel"; then
  echo "error: built wheel $wheel has no bin/llama-server (CMAKE_ARGS ignored?)" >&2; exit 1
fi
mkdir -p "$DIR"; mv "$wheel" "$DIR/"; echo "$DIR/$(basename "$wheel")"
