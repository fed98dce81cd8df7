#!/usr/bin/env bash
# The test suite: lint, format check, mypy (strict on shared/), pytest, then the containers.
# Called by `make test`, which CI runs through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BIN="$VENV/bin"

# The queue tests need a real redis-server binary (they start their own on a free port).
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing Debian's redis-server package" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null;
  else sudo apt-get update -q >/dev/null && sudo apt-get install -y -q redis-server >/dev/null; fi
fi

echo "== ruff check"; "$BIN/ruff" check .
echo "== ruff format --check"; "$BIN/ruff" format --check .
echo "== mypy (strict on shared/ and services/)"; "$BIN/mypy"
echo "== pytest"; "$BIN/pytest" -q -ra --durations=15 "$@"
# The CPU image built and the distributed stack run under compose, a replica killed mid-run
# (starts a network-less dockerd as root where none answers; VINEPPO_SKIP_CONTAINERS=1 skips).
echo "== containers"; "$BIN/python" scripts/test_containers.py
