#!/usr/bin/env bash
# Refresh constraints.txt, the dependency lock that scripts/demo.sh, test.sh and bench.sh install by default:
# builds a fresh environment (.venv-lock) with the newest versions pyproject allows for every extra, runs the
# test suite there, and only if it passes writes the environment's exact versions to constraints.txt.
# Review the diff (`git diff constraints.txt`) and commit it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-lock
# shellcheck disable=SC1091
VENV=.venv-lock ONESHOT_DEPS=latest ONESHOT_EXTRAS=test,bench,train source scripts/env.sh
python -m pytest -q "$@"
{
  echo "# oneshot's dependency lock: the exact set the test suite last passed with (scripts/lock.sh wrote it)."
  echo "# Written $(date -u +%Y-%m-%d) on Python $(python -c 'import platform; print(platform.python_version())')," \
       "$(uname -s) $(uname -m), extras test,bench,train, torch from TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}."
  echo "# Used as pip constraints (-c): it pins versions but installs nothing by itself. Refresh: bash scripts/lock.sh"
  # local version labels dropped (torch==2.13.0, not 2.13.0+cpu): the index decides the build, TORCH_SPEC the version
  python -m pip freeze --exclude-editable --all | grep -vE '^(pip|oneshot)==' | sed -E 's/\+[A-Za-z0-9.]+$//'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins; review with: git diff constraints.txt"
