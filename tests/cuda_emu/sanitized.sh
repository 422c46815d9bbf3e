#!/usr/bin/env bash
# The emulated CUDA kernels under AddressSanitizer and UndefinedBehaviorSanitizer: tests/test_cuda_emu.py and
# tests/test_cuda_emu_render.py with the kernels built with -fsanitize=address,undefined
# -fno-sanitize-recover=all. torch's CPU tensors come from
# malloc, which ASan intercepts (LD_PRELOAD), so a kernel reading or writing past a tensor, a misaligned vector
# access or signed overflow in an index stops the run with a report naming the kernel line.
#   bash tests/cuda_emu/sanitized.sh [pytest args]        (uses the python on PATH)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
export ONESHOT_EMU_SANITIZE=1
$PY tests/cuda_emu/build.py > /dev/null
ASAN_OPTIONS=detect_leaks=0:detect_stack_use_after_return=0:halt_on_error=1 \
  LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
  $PY -m pytest -q -p no:cacheprovider tests/test_cuda_emu.py tests/test_cuda_emu_render.py "$@" \
  2> >(grep -v "swapcontext\|False positive\|sanitizers/issues/189\|__asan_handle_no_return" >&2)
