#!/usr/bin/env bash
# The documentation site: docs/*.md and an API reference generated from the docstrings (MkDocs + mkdocstrings,
# mkdocs.yml), built with warnings as errors into build/site (extra arguments go to `mkdocs build`).
# It sets up its own small environment, .venv-docs, with only the `docs` extra's packages from pyproject.toml: no
# torch and no compiled extension (mkdocstrings reads the source without importing it).
#   VENV    the environment's folder (default .venv-docs)
#   PYTHON  interpreter for the venv (default python3; 3.11 or newer, for tomllib)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-docs}"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" - > "$VENV/docs-requirements.txt" <<'PY'
import sys
try:
    import tomllib
except ImportError:
    sys.exit("scripts/docs.sh: reading pyproject.toml needs Python >= 3.11 (tomllib); set PYTHON")
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["docs"]))
PY
"$VENV/bin/python" -m pip install -q -U pip
"$VENV/bin/python" -m pip install -q -r "$VENV/docs-requirements.txt"
# Material for MkDocs prints a banner about MkDocs 2.0 on every build; it is not a warning of this build.
NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict -d build/site "$@"
echo "docs: built build/site (open build/site/index.html)"
