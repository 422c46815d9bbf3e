#!/usr/bin/env bash
# CI: the release as users get it (issue 23). Builds the source distribution (isolated, as `python -m build` does
# by default), installs it into a fresh venv holding only torch and the build tools, exactly as docs/install.md
# says (no editable install, no checkout on sys.path), checks the wheel pip built from it on the way (one compile,
# not two), and runs .ci/install_smoke.py from another directory. Leaves the sdist and the wheel in dist/; the CUDA
# step builds from the same sdist.
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
# The sdist installs the way the docs say. pip builds a wheel from it to install (the extension compiled against
# the venv's torch) and keeps that wheel in its cache: the release's wheel, built once, checked below.
CACHE=$(mktemp -d)
MAX_JOBS=${MAX_JOBS:-2} "$V/bin/pip" install -q --no-build-isolation --cache-dir "$CACHE" "$SDIST"
WHEEL=$(find "$CACHE" -name 'oneshot_avatar-*.whl' | head -1)
[ -n "$WHEEL" ] || { echo "pip kept no wheel of the sdist in $CACHE"; exit 1; }
cp "$WHEEL" dist/
WHEEL=dist/$(basename "$WHEEL")
rm -rf "$CACHE"
"$V/bin/python" - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
so = [n for n in names if n.startswith("oneshot/_C") and n.endswith(".so")]
assert so and "oneshot/_C_build.json" in names, f"the wheel lacks the compiled extension: {names[:10]}"
assert not any(n.startswith(("csrc/", "tests/")) for n in names)
print(f"wheel: {sys.argv[1]} ({len(names)} files, extension {so[0]})")
PY
cd /tmp
"$V/bin/python" "$ROOT/.ci/install_smoke.py"
