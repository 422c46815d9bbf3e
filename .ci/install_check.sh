#!/usr/bin/env bash
# CI: the release as users get it (issue 23). Builds the source distribution (isolated, as `python -m build` does
# by default) and a wheel from it, then installs the sdist into a fresh venv holding only torch and the build tools,
# exactly as docs/install.md says (no editable install, no checkout on sys.path), and runs .ci/install_smoke.py from
# another directory. Leaves the sdist in dist/ for the CUDA step, which builds from the same file.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
V=${INSTALL_VENV:-/tmp/oneshot-install-venv}
rm -rf dist "$V"
"$PY" -m venv /tmp/oneshot-build-venv
/tmp/oneshot-build-venv/bin/pip install -q -U pip build
/tmp/oneshot-build-venv/bin/python -m build --sdist --outdir dist . | tail -1
SDIST=$(ls dist/oneshot_avatar-*.tar.gz)
echo "sdist: $SDIST ($(tar tzf "$SDIST" | grep -vc '/$') files)"
# The user's environment: torch, then the build tools (what docs/install.md tells them to install first).
"$PY" -m venv "$V"
"$V/bin/pip" install -q -U pip
"$V/bin/pip" install -q "${TORCH_SPEC:-torch==2.13.0}"
"$V/bin/pip" install -q -U setuptools wheel ninja
# A wheel builds from the sdist (compiled against the venv's torch) ...
MAX_JOBS=${MAX_JOBS:-2} "$V/bin/pip" wheel -q --no-build-isolation --no-deps -w dist "$SDIST"
WHEEL=$(ls dist/oneshot_avatar-*.whl)
"$V/bin/python" - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
so = [n for n in names if n.startswith("oneshot/_C") and n.endswith(".so")]
assert so and "oneshot/_C_build.json" in names, f"the wheel lacks the compiled extension: {names[:10]}"
assert not any(n.startswith(("csrc/", "tests/")) for n in names)
print(f"wheel: {sys.argv[1]} ({len(names)} files, extension {so[0]})")
PY
# ... and the sdist installs the way the docs say.
MAX_JOBS=${MAX_JOBS:-2} "$V/bin/pip" install -q --no-build-isolation "$SDIST"
cd /tmp
"$V/bin/python" "$ROOT/.ci/install_smoke.py"
