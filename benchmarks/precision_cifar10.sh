#!/bin/bash
# bf16 vs fp32 before the paper protocol's long runs (BENCHMARKS.md, "Precision"): does bf16
# change the accuracy of condensation (precision=bf16) or of evaluation (eval.precision=bf16)?
# CIFAR-10 IPC 10 with the paper cell's settings (lr 10, the released init, seed 0, compiled)
# for 2000 iterations; each set evaluated 3 times for 1000 epochs (compiled), last epoch.
#   fp32: condense fp32, evaluate fp32        bf16: condense bf16, evaluate fp32, then
#   evaluate the fp32 set again in bf16 (pipeline/eval_set.py, the same seeds)
# Two lanes, one thread each, as run: about 2 h on 2 cores.
# Usage: bash benchmarks/precision_cifar10.sh fp32|bf16 [DATA_ROOT] [RUNS_DIR]   (start both lanes)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${2:-../shared/data/cifar10}
R=${3:-$HOME/m3d-paper/precision}
mkdir -p "$R"
export OMP_NUM_THREADS=1 TQDM_DISABLE=1
P="data.root=$DATA ipc=10 lr=10 iterations=2000 seed=0 init=mix_first compile=true diagnostics.moments=false
   eval.runs=3 eval.epochs=1000 eval.test_every=100 eval.compile=true out_dir=$R backend=local"
case $1 in
  fp32) python pipeline/run.py cifar10 $P run_name=fp32 > "$R/fp32.log" 2>&1 ;;
  bf16) python pipeline/run.py cifar10 $P precision=bf16 run_name=bf16 > "$R/bf16.log" 2>&1
        while [ ! -e "$R/fp32/synthetic/index.json" ]; do sleep 30; done   # the fp32 lane's set
        python pipeline/eval_set.py "$R/fp32" "$DATA" --preset cifar10 --no-progress --out "$R/fp32_evalbf16.json" \
          eval.runs=3 eval.epochs=1000 eval.test_every=100 eval.compile=true eval.precision=bf16 > "$R/fp32_evalbf16.log" 2>&1 ;;
  *) echo "usage: $0 fp32|bf16 [DATA_ROOT] [RUNS_DIR]" >&2; exit 2 ;;
esac
