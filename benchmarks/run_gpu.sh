#!/usr/bin/env bash
# One short session on a bare GPU machine, inside a deadline: build the extension, run the GPU-facing tests, time
# the kernels (quick sizes first, the large ones if time remains), and pack everything into ONE archive, also when
# the deadline or a signal stops the run.
#
#   OUT=/some/dir bash benchmarks/run_gpu.sh         # on the GPU machine (python3's torch is a CUDA build)
#   DEVICE=cpu bash benchmarks/run_gpu.sh            # the CPU rehearsal: the same steps, their CPU equivalents
#
# Environment (defaults in brackets):
#   DEADLINE      seconds for the whole run [480]; every step gets at most what is left, less RESERVE [10] kept
#                 for packing; a watchdog stops the run at the deadline in any case
#   DEVICE        cuda | cpu [cuda]
#   OUT           folder for the archive run_gpu_<device>.tar.gz and the log run_gpu_<device>.log [run_gpu_out]
#   PYTHON        interpreter [python3]
#   BUILD         auto (build unless the installed extension already has this device's kernels) | always |
#                 never [auto]
#   MAX_JOBS      parallel compile jobs [the core count]; TORCH_CUDA_ARCH_LIST [this GPU's architecture]
#   TESTS         test files [cuda: the GPU-facing ones; cpu: a short set]; TEST_TIMEOUT seconds a file [120];
#                 TESTS_BUDGET seconds for all of them [of what is left after the build: cuda 45%, cpu 70%]
#   SIZES         benchmark size tiers in order [cuda: "quick large"; cpu: quick]; BENCH_OPS [cuda: triplane
#                 raymarch raster render eg3d avatar (the whole model; needs transformers); cpu: triplane raymarch
#                 render (raster's quick case runs an O(cells x points) reference for half a minute on a CPU)];
#                 BENCH_BUDGET_S timing budget per case [cuda 0.5, cpu 0.05: one timed call a case, the
#                 rehearsal proves the plumbing]
# Offline: no package index is asked (PIP_NO_INDEX=1, --no-build-isolation), nor any model hub.
# The archive holds: log.txt (this log), machine.txt, build.log, tests/<file>.log and .xml, bench/<stem>.csv and
# .md per size tier and op (written as each op finishes), steps.tsv (step, exit status, seconds) and summary.md.
# Exit status: 0 all steps passed, 124 the deadline or a signal stopped the run, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
DEADLINE=${DEADLINE:-480}
RESERVE=${RESERVE:-10}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-run_gpu_out}
PY=${PYTHON:-python3}
BUILD=${BUILD:-auto}
case "$DEVICE" in
  cuda) DEF_TESTS="tests/test_cuda.py tests/test_render_triplane.py tests/test_triton.py tests/test_triton_configs.py
          tests/test_triplane.py tests/test_raymarch.py tests/test_raster.py tests/test_dtypes.py tests/test_errors.py
          tests/test_compat_eg3d.py tests/test_cuda_render.py"
        DEF_SIZES="quick large"; DEF_BUDGET=0.5; DEF_OPS="triplane raymarch raster render eg3d avatar"; DEF_SHARE=45 ;;
  cpu)  DEF_TESTS="tests/test_cuda.py tests/test_triton_configs.py tests/test_errors.py"
        DEF_SIZES="quick"; DEF_BUDGET=0.05; DEF_OPS="triplane raymarch render"; DEF_SHARE=70 ;;
  *) echo "run_gpu.sh: DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac
case "$DEADLINE" in ''|*[!0-9]*) echo "run_gpu.sh: DEADLINE must be whole seconds, got '$DEADLINE'" >&2; exit 2 ;; esac
TESTS=${TESTS:-$DEF_TESTS}
SIZES=${SIZES:-$DEF_SIZES}
BENCH_OPS=${BENCH_OPS:-$DEF_OPS}
TEST_TIMEOUT=${TEST_TIMEOUT:-120}
export BENCH_BUDGET_S=${BENCH_BUDGET_S:-$DEF_BUDGET}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this checkout's oneshot, installed or built in place

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
NAME=run_gpu_$DEVICE
LOG=$OUT/$NAME.log
ARCHIVE=$OUT/$NAME.tar.gz
WORK=$(mktemp -d "${TMPDIR:-/tmp}/$NAME.XXXXXX")/$NAME
mkdir -p "$WORK/tests" "$WORK/bench"
: > "$WORK/steps.tsv"
rm -f "$ARCHIVE"
: > "$LOG"
# Everything goes straight into $LOG as it is written (no pipe that a kill could lose), fd 4 included, which
# log() writes to whatever the current output is; a `tail` shows the log on the console (ended by finish: not by
# --pid, which a parent that reaps only after the end of output would deadlock).
exec 3>&1 4>>"$LOG" 1>&4 2>&4
tail -n +1 -f "$LOG" >&3 2>/dev/null &
TAIL=$!
exec 3>&-
END=$((T0 + DEADLINE))
STEP_PID=""
STOPPED=""
PACKED=""

now() { date +%s; }
left() { echo $((END - RESERVE - $(now))); }
log() { echo "== [$(($(now) - T0))s] $*" >&4; }

pack() {  # the archive: everything in WORK, with summary.md and a copy of the log
  [ -n "$PACKED" ] && return
  PACKED=1
  {
    echo "# run_gpu.sh on $DEVICE"
    echo
    echo "deadline ${DEADLINE} s, ran $(($(now) - T0)) s, ${STOPPED:+stopped early: $STOPPED}${STOPPED:-ran to the end}"
    echo
    echo '| step | exit status | seconds |'
    echo '|---|---:|---:|'
    awk -F'\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$WORK/steps.tsv"
    for f in "$WORK"/bench/*.md; do [ -f "$f" ] && { echo; sed 's/^# /## /' "$f"; }; done
  } > "$WORK/summary.md"
  cp "$LOG" "$WORK/log.txt"
  if tar -czf "$ARCHIVE.tmp" -C "$(dirname "$WORK")" "$NAME" && mv "$ARCHIVE.tmp" "$ARCHIVE"; then
    log "archive: $ARCHIVE ($(du -k "$ARCHIVE" | cut -f1) KiB)"
  else
    log "archive: FAILED to write $ARCHIVE"
  fi
}

finish() {  # pack, stop the watchdog and (once it has shown the last lines) the console's tail, exit with $1
  trap - EXIT
  pack
  kill "$WATCHDOG" 2>/dev/null
  sleep 1
  kill "$TAIL" 2>/dev/null
  exit "$1"
}

stop() {  # the deadline watchdog, or a signal from outside: end the running step, pack, exit 124
  trap '' TERM INT USR1
  STOPPED=$1
  log "stopping: $STOPPED"
  [ -n "$STEP_PID" ] && kill -TERM "$STEP_PID" 2>/dev/null && wait "$STEP_PID" 2>/dev/null
  finish 124
}
trap 'stop "signal INT"' INT
trap 'stop "signal TERM"' TERM
trap 'stop "deadline of ${DEADLINE} s"' USR1
trap 'finish 1' EXIT  # an unexpected end still packs
# The watchdog: steps are cut to the time left, so it fires only if something between them outlives the deadline.
( exec >/dev/null 2>&1 4>&-; trap 'kill $SLEEP; exit 0' TERM; sleep "$DEADLINE" & SLEEP=$!; wait $SLEEP
  kill -USR1 $$ ) &
WATCHDOG=$!

# step NAME SECONDS OUTPUT CMD...: CMD (output to the file OUTPUT, or "-" for this log) in the background under
# `timeout`, which makes it a process group and ends all of it at the limit; waiting on it lets a signal to this
# script act at once. Records the exit status (124: timed out) and the duration in steps.tsv.
step() {
  local name=$1 limit=$2 output=$3 start rc
  shift 3
  start=$(now)
  if [ "$limit" -le 0 ]; then
    log "$name: skipped (deadline)"
    printf '%s\t%s\t%s\n' "$name" "skipped" 0 >> "$WORK/steps.tsv"
    return 124
  fi
  log "$name (limit ${limit} s)"
  if [ "$output" = - ]; then
    timeout -k 5 "$limit" "$@" &
  else
    timeout -k 5 "$limit" "$@" > "$output" 2>&1 &
  fi
  STEP_PID=$!
  wait "$STEP_PID"
  rc=$?
  STEP_PID=""
  [ $rc -eq 124 ] && log "$name: timed out after ${limit} s"
  log "$name: exit $rc in $(($(now) - start)) s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(now) - start))" >> "$WORK/steps.tsv"
  return $rc
}
cap() { local a=$1 b; b=$(left); echo $((a < b ? a : b)); }  # min(seconds wanted, seconds left)

log "run_gpu.sh: device $DEVICE, deadline $DEADLINE s, python $PY, MAX_JOBS $MAX_JOBS, out $OUT"
export DEVICE PY
MACHINE=$(cat <<'SH'
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
echo "cores: $(nproc)"
grep -m1 "model name" /proc/cpuinfo
"$PY" - <<'PY'
import sys, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda, "| gpu", gpu)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", e)
PY
SH
)
step machine "$(cap 90)" "$WORK/machine.txt" bash -c "$MACHINE"
cat "$WORK/machine.txt"

# ---- build, unless the extension this checkout imports already has this device's kernels
backends() { step "$1" "$(cap 90)" "$WORK/$1.txt" "$PY" -c "import oneshot.ops as o; print(o.backend_info())"
             cat "$WORK/$1.txt"; }
backends backends
if [ "$BUILD" = never ] || { [ "$BUILD" = auto ] && grep -q "'native_$DEVICE': True" "$WORK/backends.txt"; }; then
  log "build: skipped (BUILD=$BUILD; the extension has the $DEVICE kernels)"
  echo "skipped (BUILD=$BUILD)" > "$WORK/build.log"
else
  if [ "$DEVICE" = cuda ]; then
    export FORCE_CUDA=1
    [ -n "${TORCH_CUDA_ARCH_LIST:-}" ] || export TORCH_CUDA_ARCH_LIST=$(timeout 60 "$PY" -c \
      "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo "9.0")
  else
    export BUILD_NO_CUDA=1
  fi
  log "build: pip install --no-build-isolation --no-deps -e . (MAX_JOBS $MAX_JOBS, arch ${TORCH_CUDA_ARCH_LIST:-cpu})"
  step build "$(cap 360)" "$WORK/build.log" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
    || { tail -40 "$WORK/build.log"; log "pip failed: building in place instead (setup.py build_ext --inplace)"
         step "build in place" "$(cap 360)" "$WORK/build_inplace.log" "$PY" setup.py build_ext --inplace \
           || { tail -40 "$WORK/build_inplace.log"; log "build failed: the tests and benchmarks go on"; }; }
  backends backends_built
fi

# ---- tests, one file at a time under its own timeout (pytest-timeout may be missing)
TESTS_BUDGET=${TESTS_BUDGET:-$(($(left) * DEF_SHARE / 100))}
TESTS_END=$(($(now) + TESTS_BUDGET))
log "tests: $(echo $TESTS | wc -w) files, ${TESTS_BUDGET} s in all, at most ${TEST_TIMEOUT} s a file"
for f in $TESTS; do
  name=$(basename "$f" .py)
  limit=$(cap $((TESTS_END - $(now))))
  limit=$((limit < TEST_TIMEOUT ? limit : TEST_TIMEOUT))
  envs=(ONESHOT_TRITON_AUTOTUNE="${TEST_AUTOTUNE:-0}")  # correctness: each kernel's fixed config (every config:
  # tests/test_triton_configs.py); autotuning every key would compile every config
  [ "$DEVICE" = cpu ] && case "$name" in test_triton*) envs+=(TRITON_INTERPRET=1) ;; esac
  step "test $name" "$limit" "$WORK/tests/$name.log" env "${envs[@]}" "$PY" -m pytest -v -p no:cacheprovider -rfE \
    --junitxml="$WORK/tests/$name.xml" "$f"
  rc=$?
  [ $rc -eq 124 ] && [ "$limit" -le 0 ] && continue
  tail -n 1 "$WORK/tests/$name.log"
  [ $rc -ne 0 ] && grep -E "^(FAILED|ERROR) " "$WORK/tests/$name.log" | head -20
done

# ---- benchmarks: each size tier in one process that writes each op's results as it finishes
for tier in $SIZES; do
  step "bench $tier" "$(cap 100000)" - "$PY" benchmarks/run.py --device "$DEVICE" --sizes "$tier" --ops $BENCH_OPS \
    --out "$WORK/bench" --name "${DEVICE}_$tier"
done

log "done"
if ! awk -F'\t' '$2 != 0 { bad = 1 } END { exit bad }' "$WORK/steps.tsv"; then
  awk -F'\t' '$2 == "skipped" || $2 == 124 { hit = 1 } END { exit !hit }' "$WORK/steps.tsv" && finish 124
  finish 1
fi
finish 0
