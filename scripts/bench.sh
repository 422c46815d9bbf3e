#!/usr/bin/env bash
# Fresh machine -> kernel benchmarks: sets up .venv (torch 2.13.0 CPU, scipy), builds oneshot, runs every
# microbenchmark and writes benchmarks/results/<device>.{csv,md}. Extra arguments go to benchmarks/run.py
# (e.g. --quick, --ops raster).
ONESHOT_EXTRAS=bench source "$(dirname "$0")/env.sh"
python benchmarks/run.py "$@"
