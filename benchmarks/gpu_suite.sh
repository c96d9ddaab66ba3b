#!/usr/bin/env bash
# The GPU suite in one call: parity at 'highest', MMNIST-L batch 16 float32 (TF32) and bf16
# against torch eager and torch.compile (separate processes), a 2-minute MMNIST-L training run,
# evaluation throughput over 10,000 sequences, peak device memory. Every JSON lands in $OUT.
#
#   benchmarks/gpu_wheels.sh                  # once, where pip can reach PyPI: fills .whl/
#   OUT=/some/dir benchmarks/gpu_suite.sh     # on the GPU machine (carry .whl); < 9 minutes
#   benchmarks/gpu_suite.sh --dry-run         # CPU, tiny sizes, same steps (tests/CI)
#
# Each step runs under its own time limit, so the suite ends within its budget and writes
# what it has; summary.json (benchmarks/suite_summary.py) says which step failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
if [[ $# -gt 0 ]]; then
  echo "gpu_suite.sh: unexpected argument '$1' (usage: gpu_suite.sh [--dry-run])" >&2
  exit 2
fi
PY=${PYTHON:-python3}  # the device image's python3; elsewhere e.g. PYTHON=.venv/bin/python
OUT=${OUT:-benchmarks/results/gpu-suite-$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG=$OUT/suite.log  # every step's output; $OUT holds 5 files (the device returns at most 8)
: > "$LOG"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then  # what the device image lacks (gpu_wheels.sh)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/stlight-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/stlight-site${PYTHONPATH:+:$PYTHONPATH}
fi

if [[ $DRY == 1 ]]; then
  export JAX_PLATFORMS=cpu
  # The same steps at tiny sizes: parity on one small case, a dim-8 model, a few steps.
  PARITY=(tests/test_parity.py -k "test_eval_outputs_match and p2_o0_d3_c1 and shifted")
  MODEL=(--size S --dim 8 --depth 1 --batch 2 --rounds 1 --repeats 1 --peak-n 128 --sides jax torch-eager)
  MODEL_BF16=("${MODEL[@]}")
  TRAIN_FLAGS=(--config=configs/mmnist.py:cpu --config.model.dim=8 --config.model.depth=1
    --config.data.num_train=32 --config.data.batch_size=8 --config.num_epochs=1
    --config.data.num_val=8 --config.data.eval_batch_size=8 --config.data.num_test=8
    --config.log_every_steps=1)
  TRAIN_SECONDS=300  # finishes its 4 steps long before; only a hang hits it
  EVAL=(--config configs/mmnist.py:cpu --sequences 16 --batch 8 --passes 1)
  LIMIT_PARITY=300 LIMIT_F32=300 LIMIT_BF16=300 LIMIT_EVAL=300
else
  PARITY=(tests/test_parity.py tests/test_train_parity.py)
  MODEL=(--size L --batch 16 --rounds 1 --repeats 5 --warmup 2)
  MODEL_BF16=(--size L --batch 16 --rounds 1 --repeats 5 --warmup 2)
  TRAIN_FLAGS=(--config=configs/mmnist.py:L --config.eval_every_epochs=0
    --config.log_every_steps=100)
  TRAIN_SECONDS=135  # ~2 minutes of steps after start-up and compile
  EVAL=(--config configs/mmnist.py:L --sequences 10000 --passes 1)
  # 9 minutes in all: 90 + 160 + 100 + 135 + 40 s, ~15 s of start-up and summary.
  LIMIT_PARITY=90 LIMIT_F32=160 LIMIT_BF16=100 LIMIT_EVAL=40
fi

status() { echo "$1 $2" >> "$WORK/steps.txt"; echo "== $1: $2 ($(date -u +%T))" | tee -a "$LOG"; }
run_step() {  # name limit_s command...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)" | tee -a "$LOG"
  timeout -s TERM -k 10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then status "$name" "timed out after ${limit} s"
  elif [[ $rc != 0 ]]; then status "$name" "failed (exit $rc)"
  else status "$name" ok; fi
}
: > "$WORK/steps.txt"
"$PY" - > "$WORK/machine.txt" 2>&1 <<'EOF'
import jax, platform
print(platform.python_version(), "jax", jax.__version__, jax.devices())
try:
    import torch
    print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
except Exception as e:
    print("torch n/a:", e)
EOF
tee -a "$LOG" < "$WORK/machine.txt"

# 1. Parity at full float32 (tests/conftest.py sets jax_default_matmul_precision='highest').
run_step parity "$LIMIT_PARITY" "$PY" -m pytest -q -p no:cacheprovider "${PARITY[@]}"

# 2. MMNIST-L batch 16: float32 (TF32 on both sides: --matmul-precision default) and bf16.
run_step bench_float32 "$LIMIT_F32" "$PY" benchmarks/compare.py "${MODEL[@]}" \
  --precision float32 --matmul-precision default --out "$OUT/compare-float32.json" \
  --log "$WORK/compare-float32.log"
run_step bench_bf16 "$LIMIT_BF16" "$PY" benchmarks/compare.py "${MODEL_BF16[@]}" \
  --precision bf16 --out "$OUT/compare-bf16.json" --log "$WORK/compare-bf16.log"
cat "$WORK"/compare-*.log >> "$LOG" 2>/dev/null

# 3. A real training run, stopped by SIGTERM after TRAIN_SECONDS (train.py saves and exits);
#    the device's memory is sampled meanwhile (JAX's preallocation off, so it shows use).
echo "== train (stopped after ${TRAIN_SECONDS} s)" | tee -a "$LOG"
MEM_PID=
if command -v nvidia-smi > /dev/null; then
  (while sleep 1; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done) \
    > "$WORK/gpu_mem.txt" 2>/dev/null &
  MEM_PID=$!
fi
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s TERM -k 60 "$TRAIN_SECONDS" \
  "$PY" train.py "${TRAIN_FLAGS[@]}" --workdir="$WORK/run" > "$WORK/train.log" 2>&1
rc=$?
cat "$WORK/train.log" >> "$LOG"
[[ -n $MEM_PID ]] && kill "$MEM_PID" 2>/dev/null
if [[ $rc == 0 || $rc == 124 ]]; then status train ok; else status train "failed (exit $rc)"; fi

# 4. Evaluation throughput (the Grain pipeline, metrics and both baselines).
run_step eval "$LIMIT_EVAL" "$PY" benchmarks/eval_throughput.py "${EVAL[@]}" \
  --out "$OUT/eval.json"

# 5. One summary: steps/s and the implied 125,000-step time, eval sequences/s, peaks.
"$PY" benchmarks/suite_summary.py --out "$OUT" --work "$WORK" --dry-run "$DRY" >> "$LOG" 2>&1
echo "wrote $OUT (summary.json, suite.log); steps:"
cat "$WORK/steps.txt"
! grep -qv ' ok$' "$WORK/steps.txt"  # exit status: 0 only when every step passed
