#!/usr/bin/env bash
# The GPU check of the training-speed work, as one short run on one CUDA GPU (written for one H200; 8 min 45 s
# at most: every step has its own time limit, and a step that fails or runs out of time is noted and the next
# one runs). Run from the repository root; writes everything under $OUT (default ./gpu_check_out):
#   env.txt                      GPU, driver, torch and package versions
#   speed_b32.{txt,json}         bench_speed: WRN-50 (--weights none), 256², bf16, default head, batch 32
#   speed_b64.{txt,json}         the same at batch 64
#   speed_b32_old.{txt,json}     batch 32 with the previous synthesis and attention code (--old): before/after
#   speed_b64_compile.{txt,json} batch 64 with torch.compile and fused AdamW (options, off by default)
#   demo.txt, demo/              the demo end to end on the GPU (train.py --config configs/demo.yaml)
#   crash_exit.txt               a demo run of one epoch with a failure planted in evaluation: it must exit
#                                (status 1) with the traceback, not hang in the shutdown of its data workers (124)
#   summary.txt                  the exit status and seconds of each step
#     bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORKERS=$(( $(nproc) < 16 ? $(nproc) : 16 ))
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt, status to summary.txt
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$OUT/summary.txt"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, timm, cv2, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'timm', timm.__version__, 'cv2', cv2.__version__, 'numpy', numpy.__version__, 'gpu', torch.cuda.is_available())"
  echo "CPUs $(nproc), DataLoader workers $WORKERS"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

BENCH=(python3 benchmarks/bench_speed.py --backbone wide_resnet50_2 --weights none --size 256 --device cuda
       --train-images 240 --workers "$WORKERS" --steps 20 --synth-samples 60)
step speed_b32 90 "${BENCH[@]}" --batch 32 --json "$OUT/speed_b32.json"
step speed_b64 90 "${BENCH[@]}" --batch 64 --json "$OUT/speed_b64.json"
step speed_b32_old 90 "${BENCH[@]}" --batch 32 --old --json "$OUT/speed_b32_old.json"
step demo 110 python3 train.py --config configs/demo.yaml output_dir="$OUT/demo" prototypes.dir="$TMP/protos" \
     data.root="$TMP/data" train.device=cuda train.workers="$WORKERS"
PLANT="import sys, train, prnet.engine.trainer as t
def fail(*args): raise RuntimeError('planted failure in evaluation')
t.evaluate_and_report = fail
sys.exit(train.main(sys.argv[1:]))"
step crash_exit 60 python3 -c "$PLANT" --config configs/demo.yaml output_dir="$TMP/crash" prototypes.dir="$TMP/protos" \
     data.root="$TMP/data" train.device=cuda train.workers="$WORKERS" train.epochs=1
step speed_b64_compile 60 "${BENCH[@]}" --batch 64 --compile --fused-adamw --json "$OUT/speed_b64_compile.json"
cat "$OUT/summary.txt"
