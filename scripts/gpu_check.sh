#!/usr/bin/env bash
# GPU check for the `cuda` embedding-bag, on a machine with one GPU and PyTorch (+ numpy, numba, ninja):
#   1. build the extension (about a minute the first time, then loaded from torch's cache), so a
#      compiler error shows once, here;
#   2. the GPU tests (pytest -m gpu -x: the first failure's output shows in full);
#   3. a benchmark: cuda vs torch at B=2048, rows=1e6, D in {64,128}, L in {20,80}, each result
#      first checked against torch's (a mismatch fails the step): median time and GB/s, beside a
#      device-to-device copy's bandwidth (fbgemm is CPU-only here: the benchmark lists it as skipped);
#   4. a short DLRM training on the GPU with --kernel cuda, then --kernel torch: samples/s.
# Run from anywhere; nothing is installed (PYTHONPATH=repo root). About 3-5 minutes; each step is
# capped, and all of them together by GPU_CHECK_BUDGET_S (default 540 s, inside a 10-minute device
# command): a step that would start with under 20 s left is skipped, a later one's cap shrinks to
# what is left. A build killed at its cap leaves torch's lock file in the build folder; the next build
# removes it, saying so. A failed build is not retried by the later steps: they run without kernel
# cuda (DLRMBENCH_CUDA_UNAVAILABLE). Outputs go to ${OUT:-results/gpu_check}.
# Without a GPU every step says so and skips; the script still exits 0 unless a step fails. The last
# line counts the steps passed, skipped and failed. PYTHON (default python3) must import torch: else
# the script stops at once, exit 2. A relative PYTHON is taken from the current folder if it is there.
set -uo pipefail
PY="${PYTHON:-python3}"
case "$PY" in */*) [ -e "$PY" ] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
cd "$(dirname "$0")/.."
if ! why=$("$PY" -c 'import torch' 2>&1); then
  hint=.venv/bin/python; [ -x "$PWD/$hint" ] && hint="$PWD/$hint"
  echo "gpu_check: PYTHON=$PY cannot import torch ($(printf '%s\n' "$why" | tail -n 1)); rerun with PYTHON=$hint or another Python that has PyTorch" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-results/gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
STEP_OUT="$OUT_DIR/.step.out"
: >"$LOG"
passed=() skipped=() failed=()
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"

say() { echo "== $*" | tee -a "$LOG"; }
skip() {  # skip NAME REASON
  say "$1: skipped: $2"
  skipped+=("$1")
}
step() {  # step NAME SECONDS SKIP_RE CMD...: run with a time cap, log it, count it; exit 0 with
          # a line of output matching SKIP_RE (grep -E) counts as skipped, not passed
  local name="$1" limit="$2" skip_re="$3"; shift 3
  local left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 20 ]; then
    skip "$name" "out of time: ${SECONDS}s of the ${BUDGET_S}s budget (GPU_CHECK_BUDGET_S) are spent"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "$name (at most ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$STEP_OUT" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "$name: exit $rc after $((SECONDS - t0))s"
  if [ "$rc" -ne 0 ]; then
    failed+=("$name")
  elif [ -n "$skip_re" ] && grep -Eq "$skip_re" "$STEP_OUT"; then
    skipped+=("$name")
  else
    passed+=("$name")
  fi
  rm -f "$STEP_OUT"
}

say "gpu_check: $(date -u +%FT%TZ) in $PWD"
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import shutil, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible'}; nvcc: {shutil.which('nvcc')}")
PY
has_gpu=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

build_py='
import sys, time
from kernels import cuda_bag
why = cuda_bag.unavailable_reason()
if why:
    print(f"cuda build: skipped: {why}")
    sys.exit(0)
print("cuda build: building, or loading the cached build")
t0 = time.perf_counter()
try:
    cuda_bag.extension()
except Exception as exc:
    sys.exit(f"cuda build: FAILED: {exc}")
print(f"cuda build: ready after {time.perf_counter() - t0:.0f}s")
'
step "cuda build" 300 '^cuda build: skipped' "$PY" -c "$build_py"
build_failed=0
if [ ${#failed[@]} -gt 0 ]; then  # each later process would build again (minutes) and fail the same way
  build_failed=1
  export DLRMBENCH_CUDA_UNAVAILABLE="its build failed in gpu_check's first step (see $LOG)"
fi

if "$PY" -c 'import pytest' 2>/dev/null; then
  # -p no:cacheprovider: the tree may be read-only. -x: stop at the first failure, shown in full.
  # Skipped, not passed, when pytest's summary has no "passed" (every GPU test skipped, with its reason).
  step "GPU tests" 300 '^(=+ )?[0-9]+ skipped' "$PY" -m pytest -q -x -p no:cacheprovider -m gpu -rs tests
else
  skip "GPU tests" "pytest is not installed (the benchmark below still checks each kernel against torch)"
fi

step "benchmark" 150 '^gpu_bench: skipped' "$PY" scripts/gpu_bench.py --out "$OUT_DIR"

if [ "$has_gpu" != 1 ]; then
  skip "DLRM training" "no CUDA device visible"
elif ! "$PY" -c 'import psutil' 2>/dev/null; then
  skip "DLRM training" "psutil is not installed (dlrmbench's CLI needs it)"
else
  # Kaggle-shaped model, tables scaled to 26 x 1e5 rows, D=64, L=20 fixed, B=2048
  train_args=(--arch-sparse-feature-size=64 --arch-mlp-bot=13-512-256-64 --arch-mlp-top=512-256-1
              --arch-embedding-size=100000x26 --mini-batch-size=2048 --num-batches=60
              --num-indices-per-lookup=20 --num-indices-per-lookup-fixed --print-freq=20 --print-time --use-gpu)
  for kernel in cuda torch; do
    if [ "$kernel" = cuda ] && [ "$build_failed" = 1 ]; then
      skip "DLRM training (--kernel cuda)" "the cuda build failed"
      continue
    fi
    step "DLRM training (--kernel $kernel)" 90 "" "$PY" -m profiler.cli train "${train_args[@]}" --kernel "$kernel" \
      --json-out "$OUT_DIR/train_$kernel.json"
  done
  "$PY" - "$OUT_DIR" <<'PY' 2>&1 | tee -a "$LOG"
import json, pathlib, sys
for kernel in ("cuda", "torch"):
    path = pathlib.Path(sys.argv[1]) / f"train_{kernel}.json"
    if path.exists():
        r = json.loads(path.read_text())
        print(f"DLRM --kernel {kernel}: {r['step_samples_per_s']:,.0f} samples/s by step, "
              f"{r['samples_per_s']:,.0f} by wall clock, {r['ms_per_iter']:.2f} ms/it")
PY
fi

names() { local out="" name; for name in "$@"; do out+="${out:+, }$name"; done; echo "$out"; }
p=$(names ${passed[@]+"${passed[@]}"}) s=$(names ${skipped[@]+"${skipped[@]}"}) f=$(names ${failed[@]+"${failed[@]}"})
counts="${#passed[@]} passed${p:+ ($p)}, ${#skipped[@]} skipped${s:+ ($s)}, ${#failed[@]} failed${f:+ ($f)}"
if [ ${#failed[@]} -gt 0 ]; then
  verdict="a step FAILED: $counts"
elif [ ${#passed[@]} -eq 0 ] && [ "$has_gpu" != 1 ]; then
  verdict="nothing was checked, no CUDA device is visible: $counts"
elif [ ${#passed[@]} -eq 0 ]; then
  verdict="nothing was checked, every step skipped: $counts"
else
  verdict="$counts"
fi
say "gpu_check: done in ${SECONDS}s, $verdict; log: $LOG"
[ ${#failed[@]} -eq 0 ] || exit 1
