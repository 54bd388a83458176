#!/usr/bin/env bash
# The GPU-scale runs of the benchmarks. NOT YET COMPLETED ON A GPU: the one H100 attempt (2048 images,
# teachers base+large) ran past its 9-minute limit with no output back; sizes are now smaller. Usage: bash bench/run_gpu.sh [OUTDIR]
# Student ViT-Small/16 (full scale) at 224 px, batch 128, random-weight SigLIP teachers (base/large widths).
# Set TSL_BENCH_SMALL=1 to smoke-test the same commands on a CPU at tiny sizes.
set -u
OUT_DIR=${1:-${OUT:-/tmp/tsl_bench_gpu_out}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 TSL_BENCH_DIR=${TSL_BENCH_DIR:-/tmp/tsl_bench_gpu}
DEV=cuda; SIZE=224; IMGS=1024; BS=128; STEPS=5; THREADS=4; TEACHERS=${TEACHERS:-base}; BUILD_TEACHER=${BUILD_TEACHER:-base}
if [ "${TSL_BENCH_SMALL:-0}" = 1 ]; then DEV=cpu; SIZE=64; IMGS=128; BS=16; STEPS=1; THREADS=1; TEACHERS=local-m; BUILD_TEACHER=local-m; fi
python -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
python -m bench.data_stall --device $DEV --scale full --image-size $SIZE --images $IMGS --batch-size $BS \
  --teacher local-m --workers 0,2,4 --threads $THREADS --reps 3 ${BASELINE:+--baseline-reader $BASELINE} 2>&1 | grep -v "^\[transformers\]\|Loading weights\|Writing model"
python -m bench.cache_vs_online --device $DEV --scale full --image-size $SIZE --images $IMGS --batch-size $BS \
  --teachers $TEACHERS --steps $STEPS --threads $THREADS --reps 3 2>&1 | grep -v "^\[transformers\]\|Loading weights\|Writing model"
python -m bench.cache_build --device $DEV --image-size $SIZE --images $((IMGS / 2)) --batch-size $BS \
  --teacher $BUILD_TEACHER --threads $THREADS --reps 3 2>&1 | grep -v "^\[transformers\]\|Loading weights\|Writing model"
cp bench/RESULTS.md "$OUT_DIR/RESULTS.md"
