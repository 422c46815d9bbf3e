#!/usr/bin/env bash
# Fresh machine -> test results: sets up .venv (torch 2.13.0 CPU, test tools), builds oneshot, runs the suite.
# Extra arguments go to pytest (e.g. `-m slow` for the slow tests, `-k raster`).
source "$(dirname "$0")/env.sh"
python -m pytest "$@"
