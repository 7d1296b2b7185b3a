#!/usr/bin/env bash
# Build the wheelhouse the Ansible role installs from: one tar holding the hosttune wheel and a wheel of every
# runtime dependency, so inference hosts install offline (`pip install --no-index --find-links`).
#
# Why one tar: the role ships it with a single checksummed copy (idempotent; a rebuilt archive means reinstall),
# instead of one copy per wheel. The tar is reproducible (sorted names, fixed mtime and owner), so rebuilding the
# same sources gives the same checksum and a re-run of site.yml changes nothing.
#
# Usage: scripts/build-wheelhouse.sh OUT.tar [PYTHON]     (PYTHON: the interpreter whose pip builds; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/build-wheelhouse.sh OUT.tar [PYTHON]}
PY=${2:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Build from a clean copy of just what the wheel is made of (the package, plus the data files pyproject takes
# from systemd/ and policies/): no stray build/ or egg-info, and not tests/, whose fixture sysfs trees hold
# symlinks that setuptools' package discovery would walk for minutes.
git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md 'LICENSE*' agent systemd policies \
  | tar --null -T - -cf - | tar -xf - -C "$tmp" --one-top-level=src
SOURCE_DATE_EPOCH=315532800 "$PY" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$tmp/wheels" "$tmp/src" >&2
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp/wheels" -cf "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
echo "$OUT"
