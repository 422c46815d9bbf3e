#!/usr/bin/env bash
# One go on a GPU machine: build the CUDA extension, run the test suite (the CUDA tests included), run the GPU
# benchmarks, and write everything under OUT (default benchmarks/results):
#   OUT=/some/dir bash benchmarks/run_gpu.sh            # uses the python on PATH (a CUDA build of torch)
# Environment: TORCH_CUDA_ARCH_LIST (default: this GPU's architecture), MAX_JOBS, QUICK=1 (skip the largest sizes),
# FULL_TESTS=1 (the whole test suite, not only the GPU tests), TEST_TIMEOUT (seconds for the tests, default 300).
# Order: build, GPU tests, kernel benchmarks, avatar benchmark; everything lands in OUT as it is produced.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
log() { echo "== $*" | tee -a "$OUT/gpu_run.log"; }

log "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$OUT/gpu_run.log"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  2>&1 | tee -a "$OUT/gpu_run.log"

log "build (pip install --no-build-isolation --no-deps -e .)"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  export TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
fi
start=$(date +%s)
FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-8} $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/gpu_build.log" 2>&1
rc=$?
log "build rc=$rc in $(( $(date +%s) - start )) s (arch $TORCH_CUDA_ARCH_LIST)"
[ $rc -eq 0 ] || { tail -50 "$OUT/gpu_build.log"; exit $rc; }

log "tests"
$PY -c "import oneshot.ops as o; print(o.backend_info())" 2>&1 | tee -a "$OUT/gpu_run.log"
# The tests that use the GPU (the CUDA kernels, the device-parametrised op suites, Triton compiled for real), each
# phase under a time limit so that one hang cannot eat the lease; FULL_TESTS=1 runs the whole suite instead.
TESTS="tests/test_cuda.py tests/test_triplane.py tests/test_raymarch.py tests/test_raster.py tests/test_dtypes.py"
TESTS="$TESTS tests/test_errors.py tests/test_triton.py tests/test_render_triplane.py"
[ "${FULL_TESTS:-0}" = "1" ] && TESTS=tests
if $PY -c "import pytest, hypothesis" 2>/dev/null; then
  timeout "${TEST_TIMEOUT:-300}" $PY -m pytest -q -p no:cacheprovider $TESTS --junitxml="$OUT/gpu_tests.xml" 2>&1 \
    | tail -40 | tee "$OUT/gpu_tests.log"
else
  log "pytest/hypothesis missing on this machine: tests skipped"
fi

log "benchmarks"
QUICK_FLAG=""
[ "${QUICK:-0}" = "1" ] && QUICK_FLAG="--quick"
$PY benchmarks/run.py --device cuda $QUICK_FLAG --name cuda 2>&1 | tail -60 | tee "$OUT/gpu_bench.log"
[ "$OUT" = benchmarks/results ] || cp benchmarks/results/cuda.csv benchmarks/results/cuda.md "$OUT/" 2>/dev/null || true
log "fused renderer vs composed ops (render_triplane; composed only until a CUDA kernel exists)"
$PY benchmarks/bench_render.py --device cuda $QUICK_FLAG 2>&1 | tail -12 | tee -a "$OUT/gpu_bench.log"
[ "$OUT" = benchmarks/results ] || cp benchmarks/results/render_cuda.* "$OUT/" 2>/dev/null || true
if $PY -c "import transformers, safetensors" 2>/dev/null; then
  log "avatar inference benchmark (per preset, native vs reference ops)"
  $PY benchmarks/bench_avatar.py --device cuda $QUICK_FLAG 2>&1 | tail -30 | tee -a "$OUT/gpu_bench.log"
  [ "$OUT" = benchmarks/results ] || cp benchmarks/results/avatar_cuda.* "$OUT/" 2>/dev/null || true
else
  log "transformers/safetensors missing on this machine: avatar benchmark skipped"
fi
log "done"
