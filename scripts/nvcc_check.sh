#!/usr/bin/env bash
# Compile CUDA sources to objects with the flags torch's extension build uses, without linking: a quick check
# that a .cu file compiles (for one architecture) while developing on a machine without a GPU.
#   PYTHON=.venv-cuda/bin/python bash scripts/nvcc_check.sh csrc/raymarch/raymarch_cuda.cu [more.cu ...]
# NVCC_EXTRA adds flags (scripts/ptxas_report.py passes "-Xptxas -v").
# Needs a CUDA build of torch in $PYTHON's environment and nvcc (CUDA_HOME, default /usr/local/cuda).
set -euo pipefail
PYTHON=${PYTHON:-python}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
ARCH=${ARCH:-90}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
INCS=$("$PYTHON" -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))")
ABI=$("$PYTHON" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
OUT=${OUT:-/tmp/oneshot_nvcc_check}
mkdir -p "$OUT"
for src in "$@"; do
  obj="$OUT/$(basename "${src%.cu}").o"
  echo "nvcc $src -> $obj"
  "$CUDA_HOME/bin/nvcc" -c "$src" -o "$obj" -I"$ROOT/csrc" $INCS -std=${CXXSTD:-c++20} -O3 --expt-relaxed-constexpr \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ -D_GLIBCXX_USE_CXX11_ABI="$ABI" -DONESHOT_WITH_CUDA=1 \
    -gencode "arch=compute_$ARCH,code=sm_$ARCH" --compiler-options -fPIC -Xcudafe --diag_suppress=20012 \
    ${NVCC_EXTRA:-}
done
