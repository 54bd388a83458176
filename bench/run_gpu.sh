#!/usr/bin/env bash
# The real-scale benchmarks on one lent GPU (H100/H200, 16 cores), in about 5 minutes; every step is
# time-boxed and writes as it goes, so a step that hangs or fails costs only its own slot.
#
#   bash bench/run_gpu.sh [OUTDIR]        # OUTDIR defaults to $OUT (the device runner's folder)
#   TSL_BENCH_SMALL=1 bash bench/run_gpu.sh /tmp/x   # the same steps on a CPU at tiny sizes (tests)
#
# Outputs (<= 8 files): run_gpu.log (everything printed), results.md (the result sections, to paste
# into bench/RESULTS.md), timings.txt (seconds per step and exit codes).
# Needs torch, torchvision, transformers, timm, h5py, numpy, pillow, pyyaml, safetensors and pydantic; not
# ray, optuna, sqlalchemy or plotly (tests/test_run_gpu.py runs it with those imports blocked). The device
# image has no pydantic: `bash bench/gpu_wheels.sh` puts its wheels in .whl/, carry that folder, and this
# script installs what it holds into a private folder first.
#   TSL_BENCH_STEPS=data_stall,cache_vs_online bash bench/run_gpu.sh   # only the named steps
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/tsl_bench_gpu_out}}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TSL_BENCH_DIR=${TSL_BENCH_DIR:-/tmp/tsl_bench_gpu} TSL_BENCH_RESULTS="$OUT_DIR/results.md"
PY=${PYTHON:-$(command -v python || command -v python3)}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/tsl_site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/tsl_site"
fi
LOG="$OUT_DIR/run_gpu.log"
TIMES="$OUT_DIR/timings.txt"
BUDGET=${TSL_BENCH_BUDGET:-420}  # seconds: later steps are skipped once this much has gone
: > "$LOG"; : > "$TIMES"

if [ "${TSL_BENCH_SMALL:-0}" = 1 ]; then
  DEV=cpu; SCALE=local; S224=64; S256=64; IMGS=128; BS=16; SECS=1; REPS=1; PAR=1,2; PHOTOS=16
  TEACHER=local-m; SIZES=5k; TRIALS=1,2; EVAL_DIM=64; STEPS=1
else
  DEV=cuda; SCALE=full; S224=224; S256=256; IMGS=2048; BS=256; SECS=6; REPS=3; PAR=1,4,16; PHOTOS=192
  TEACHER=large; SIZES=5k,50k; TRIALS=1,2,4; EVAL_DIM=1024; STEPS=3
fi
# The decode and build steps run with torch's default thread count, as `tinysiglip cache build` does
# (the other steps pin one torch thread per process, see bench/README.md).
CORES=$(nproc); [ "${TSL_BENCH_SMALL:-0}" = 1 ] && CORES=1
START=$(date +%s)

step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local now=$(( $(date +%s) - START ))
  if [ -n "${TSL_BENCH_STEPS:-}" ] && [ "$name" != preflight ] && [[ ",$TSL_BENCH_STEPS," != *",$name,"* ]]; then
    return
  fi
  if [ "$now" -ge "$BUDGET" ]; then
    echo "SKIPPED $name (budget of ${BUDGET}s spent)" | tee -a "$LOG" "$TIMES"; return
  fi
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | grep --line-buffered -v "^\[transformers\]\|Loading weights\|Writing model" >> "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$LOG" "$TIMES"
}

step preflight 60 "$PY" -c "
import sys, torch, torchvision, transformers, timm, h5py, numpy, PIL, pydantic
import tinysiglip.train
import bench.common, bench.gpu_share, bench.data_stall, bench.eval_scale, bench.cache_vs_online
import bench.loader, bench.decode, bench.cache_build
print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__,
      'transformers', transformers.__version__, 'timm', timm.__version__, 'h5py', h5py.__version__)
print(bench.common.machine())
"
# 1. trials sharing one GPU (steps/s alone vs 2 and 4 at once, memory capped per process)
step gpu_share 150 "$PY" -m bench.gpu_share --device "$DEV" --scale "$SCALE" --trials "$TRIALS" \
  --image-size "$S224" --batch-size "$BS" --images "$IMGS" --seconds "$SECS"
# 2. the loader at 224 px feeding the GPU (stall % vs the same batches in memory)
step data_stall 150 "$PY" -m bench.data_stall --device "$DEV" --scale "$SCALE" --image-size "$S224" \
  --images "$IMGS" --batch-size "$BS" --teacher tiny --workers 0,2,4 --reps "$REPS"
# 3. Recall@K at COCO 5k (and 10x) on the GPU vs the similarity matmul alone
step eval_scale 120 "$PY" -m bench.eval_scale --device "$DEV" --sizes "$SIZES" --dim "$EVAL_DIM" --reps 1
# 4. cache vs online distillation with a Large-sized random SigLIP teacher at 256 px
step cache_vs_online 180 "$PY" -m bench.cache_vs_online --device "$DEV" --scale "$SCALE" --image-size "$S256" \
  --images $((IMGS / 2)) --batch-size "$BS" --teachers "$TEACHER" --steps "$STEPS" --reps 2
# 5. the loader alone at 224 and 256 px on this machine's cores (workers 0/1/2/4, raw read limit)
step loader 120 "$PY" -m bench.loader --sizes "$S224,$S256" --images "$IMGS" --batch-size "$BS" \
  --workers 0,1,2,4 --reps "$REPS"
# 6. JPEG decode + resize per core (threads vs processes, torchvision, nvJPEG) vs the teacher's speed
step decode 120 "$PY" -m bench.decode --device "$DEV" --images "$PHOTOS" --parallel "$PAR" --reps "$REPS" \
  --threads "$CORES"
# 7. cache build at the teacher's speed: build vs forward alone vs decode alone (overlap)
step cache_build 150 "$PY" -m bench.cache_build --photos --device "$DEV" --teacher "$TEACHER" --image-size 256 \
  --images $((PHOTOS * 2)) --batch-size 64 --reps 2 --threads "$CORES"

echo "total seconds=$(( $(date +%s) - START ))" | tee -a "$LOG" "$TIMES"
! grep -q "rc=[1-9]" "$TIMES"
