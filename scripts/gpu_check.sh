#!/usr/bin/env bash
# GPU check for the `cuda` embedding-bag, on a machine with one GPU and PyTorch (+ numpy, numba):
#   1. the GPU tests (pytest -m gpu; builds the extension on first use, about a minute);
#   2. a benchmark: cuda vs torch (and fbgemm when importable) at B=2048, rows=1e6, D in {64,128},
#      L in {20,80}: median time and GB/s, beside a device-to-device copy's bandwidth;
#   3. a short DLRM training on the GPU with --kernel cuda, then --kernel torch: samples/s.
# Run from anywhere; nothing is installed (PYTHONPATH=repo root). About 3-5 minutes; each step is
# capped so the whole stays under 8. Outputs go to ${OUT:-results/gpu_check}.
# Without a GPU every step says so and skips; the script still exits 0 unless a step fails.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-results/gpu_check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
status=0

say() { echo "== $*" | tee -a "$LOG"; }
step() {  # step NAME SECONDS CMD...: run with a time cap, log it, remember a failure
  local name="$1" limit="$2"; shift 2
  say "$name (at most ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "$name: exit $rc after $((SECONDS - t0))s"
  [ "$rc" -eq 0 ] || status=1
}

say "gpu_check: $(date -u +%FT%TZ) in $PWD"
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import shutil, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none visible'}; nvcc: {shutil.which('nvcc')}")
PY
has_gpu=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

if "$PY" -c 'import pytest' 2>/dev/null; then
  # -p no:cacheprovider: the tree may be read-only; the first test builds the extension
  step "GPU tests" 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests
else
  say "GPU tests: skipped: pytest is not installed (the benchmark below still checks each kernel against torch)"
fi

step "benchmark" 150 "$PY" scripts/gpu_bench.py --out "$OUT_DIR"

if [ "$has_gpu" != 1 ]; then
  say "DLRM training: skipped: no CUDA device visible"
elif ! "$PY" -c 'import psutil' 2>/dev/null; then
  say "DLRM training: skipped: psutil is not installed (dlrmbench's CLI needs it)"
else
  # Kaggle-shaped model, tables scaled to 26 x 1e5 rows, D=64, L=20 fixed, B=2048
  train_args=(--arch-sparse-feature-size=64 --arch-mlp-bot=13-512-256-64 --arch-mlp-top=512-256-1
              --arch-embedding-size=100000x26 --mini-batch-size=2048 --num-batches=60
              --num-indices-per-lookup=20 --num-indices-per-lookup-fixed --print-freq=20 --print-time --use-gpu)
  for kernel in cuda torch; do
    step "DLRM training, --kernel $kernel" 90 "$PY" -m profiler.cli train "${train_args[@]}" --kernel "$kernel" \
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

say "gpu_check: done in ${SECONDS}s, $([ $status -eq 0 ] && echo 'all steps passed' || echo 'a step FAILED'); log: $LOG"
exit $status
