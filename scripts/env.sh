# Sourced by scripts/test.sh and scripts/bench.sh: a virtual environment in .venv with torch and oneshot built
# from this checkout (editable, so the compiled extension sits next to the sources).
#   PYTHON          interpreter for the venv (default python3)
#   TORCH_SPEC      torch requirement (default torch==2.13.0, the CPU build; e.g. torch==2.14.1 for CUDA)
#   ONESHOT_EXTRAS  extras to install with oneshot (default test)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q -U pip setuptools wheel ninja
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
# --no-build-isolation: compile against the torch installed above, never a freshly downloaded one.
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --no-build-isolation -e ".[${ONESHOT_EXTRAS:-test}]"
# GFPGAN's own architecture, for the super-resolution compatibility tests only: --no-deps, since its
# dependency basicsr breaks the CPU torch and modern torchvision (oneshot never imports it at run time).
if [[ "${ONESHOT_EXTRAS:-test}" == *test* ]]; then python -m pip install -q --no-deps "gfpgan==1.3.8"; fi
python -c "import oneshot.ops as o; print('oneshot backends:', o.backend_info())"
