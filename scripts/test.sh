#!/usr/bin/env bash
# Fresh machine -> test results: sets up .venv (torch 2.13.0 CPU, test tools), builds oneshot, runs the suite.
# Extra arguments go to pytest (e.g. `-m slow` for the slow tests, `-k raster`).
# ONESHOT_TEST_WORKERS=N (N > 1): N pytest processes (pytest-xdist), each test file kept on one of them and one torch
# thread each (tests of threading set their own counts: tests/test_determinism.py); CI runs the suite this way.
source "$(dirname "$0")/env.sh"
WORKERS="${ONESHOT_TEST_WORKERS:-1}"
if [ "$WORKERS" -gt 1 ]; then
  OMP_NUM_THREADS=1 python -m pytest -n "$WORKERS" --dist loadfile "$@"
else
  python -m pytest "$@"
fi
