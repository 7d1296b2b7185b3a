#!/usr/bin/env bash
# Every test tier, then lint and types. pytest's exit 5 (no tests collected) is a failure, not a pass.
set -uo pipefail
VENV=${VENV:-.venv}
rc=0
"$VENV/bin/ruff" check agent tests scripts bench || rc=1
"$VENV/bin/mypy" || rc=1
"$VENV/bin/pytest" "$@"
prc=$?
if [ $prc -eq 5 ]; then echo "error: pytest collected no tests" >&2; prc=1; fi
[ $prc -ne 0 ] && rc=$prc
exit $rc
