# Sourced by scripts/demo.sh, test.sh and bench.sh: a virtual environment (default .venv) with torch and oneshot
# built from this checkout (editable, so the compiled extension sits next to the sources).
#   ONESHOT_DEPS    lock (default): every install is held to constraints.txt, the dependency set the suite last
#                   passed with, so a fresh machine gets a known-good set; latest: the newest versions pyproject
#                   allows (what a bare `pip install oneshot-avatar` gets; CI runs the suite this way too)
#   VENV            the environment's folder (default .venv)
#   PYTHON          interpreter for the venv (default python3)
#   TORCH_SPEC      torch requirement (default torch==2.13.0, the CPU build; e.g. torch==2.14.1 for CUDA). The
#                   lock is for the default torch: with another one, torch and triton are left free.
#   ONESHOT_EXTRAS  extras to install with oneshot (default test); "test" and "faces" also install the face front
#                   end the lean way (scripts/install_faces.sh: MediaPipe without its unused dependencies)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
ONESHOT_DEPS="${ONESHOT_DEPS:-lock}"
DEFAULT_TORCH="torch==2.13.0"
TORCH_SPEC="${TORCH_SPEC:-$DEFAULT_TORCH}"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
# shellcheck disable=SC1090
. "$VENV/bin/activate"
case "$ONESHOT_DEPS" in
  lock)
    cp constraints.txt "$VENV/constraints.txt"
    if [ "$TORCH_SPEC" != "$DEFAULT_TORCH" ]; then
      echo "oneshot: TORCH_SPEC=$TORCH_SPEC is not the locked $DEFAULT_TORCH; torch and triton are left unpinned" >&2
      grep -viE '^(torch|triton)==' constraints.txt > "$VENV/constraints.txt"
    fi
    PIN=(-c "$VENV/constraints.txt") ;;
  latest)
    # newest of everything, except torch, which stays what TORCH_SPEC asks (an eager upgrade would fetch the
    # 5 GB CUDA build)
    echo "$TORCH_SPEC" > "$VENV/constraints.txt"
    PIN=(-c "$VENV/constraints.txt" --upgrade --upgrade-strategy eager) ;;
  *)
    echo "oneshot: ONESHOT_DEPS must be 'lock' or 'latest', got '$ONESHOT_DEPS'" >&2; return 2 2>/dev/null || exit 2 ;;
esac
python -m pip install -q -U pip
python -m pip install -q -U "${PIN[@]}" setuptools wheel ninja
python -m pip install -q "${PIN[@]}" "$TORCH_SPEC"
# The distribution was called `oneshot` before issue 23 (a name PyPI gives an unrelated project): drop such an
# install of this checkout so the renamed one is the only owner of the `oneshot` package.
if python -m pip show -q oneshot >/dev/null 2>&1; then python -m pip uninstall -q -y oneshot; fi
EXTRAS="${ONESHOT_EXTRAS:-test}"
PIP_EXTRAS=$(echo "$EXTRAS" | tr ',' '\n' | grep -vx faces | paste -sd, - || true)
# --no-build-isolation: compile against the torch installed above, never a freshly downloaded one.
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q "${PIN[@]}" --no-build-isolation -e ".${PIP_EXTRAS:+[$PIP_EXTRAS]}"
# GFPGAN's own architecture, for the super-resolution compatibility tests only: --no-deps, since its
# dependency basicsr breaks the CPU torch and modern torchvision (oneshot never imports it at run time).
if [[ "$EXTRAS" == *test* ]]; then python -m pip install -q --no-deps "gfpgan==1.3.8"; fi
# The face front end (its tests run in the suite): MediaPipe without the ~530 MB it declares but never imports.
if [[ "$EXTRAS" == *test* || "$EXTRAS" == *faces* ]]; then bash scripts/install_faces.sh "${PIN[@]}"; fi
python -c "import oneshot.ops as o; print('oneshot backends:', o.backend_info())"
echo "oneshot: dependencies: $ONESHOT_DEPS ($VENV; $(python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|kernels) ' | tr -s ' ' | paste -sd, -))"
