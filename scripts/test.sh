#!/usr/bin/env bash
# Fresh machine -> test results: sets up .venv (torch 2.13.0 CPU, test tools), builds oneshot, runs the suite.
# Extra arguments go to pytest (e.g. `-m slow` for the slow tests, `-k raster`).
# The suite runs in ONESHOT_TEST_WORKERS pytest processes (pytest-xdist; default 2, or 1 on a one-core machine), each
# test file kept on one of them, one torch thread each (tests of threading set their own counts:
# tests/test_determinism.py). ONESHOT_TEST_WORKERS=1 runs it in this process. CI runs this same command.
source "$(dirname "$0")/env.sh"
CORES=$(nproc 2>/dev/null || echo 1)
WORKERS="${ONESHOT_TEST_WORKERS:-$(( CORES >= 2 ? 2 : 1 ))}"
if [ "$WORKERS" -gt 1 ]; then
  OMP_NUM_THREADS=1 python -m pytest -n "$WORKERS" --dist loadfile "$@"
else
  python -m pytest "$@"
fi
