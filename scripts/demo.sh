#!/usr/bin/env bash
# Fresh machine -> the demo: sets up .venv (torch 2.13.0 CPU) and oneshot, synthesizes data with the built-in
# morphable model, trains the tiny avatar on the CPU for a few minutes and writes a report
# (default ./oneshot_demo/report). Extra arguments go to `oneshot demo` (e.g. --minutes 5 --out DIR).
source "$(dirname "$0")/env.sh"
python -m oneshot demo "$@"
