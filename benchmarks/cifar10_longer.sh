#!/bin/bash
# The longer CIFAR-10 IPC 10 budget runs of BENCHMARKS.md: both kernels to 2000 iterations and the
# linear kernel at lr 0.04, each step count evaluated with two 200-epoch runs. Same protocol as
# benchmarks/cifar10_budget.sh otherwise (seed 3, real batch 128, factor 2, ConvNet-3, tested at
# the last epoch). Two processes, 1 thread each, at low priority so other work on the machine
# keeps its cores; their condensation seconds are therefore not speeds.
# Usage: bash benchmarks/cifar10_longer.sh   (prepares ../shared/data/cifar10 into data/cifar10 first)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/cifar10/manifest.parquet ] || python pipeline/prepare.py ../shared/data/cifar10 data/cifar10 --no-progress
export OMP_NUM_THREADS=1
P="data.root=data/cifar10 ipc=10 eval.runs=2 eval.epochs=200 eval.test_every=200 seed=3"
OUT=benchmarks/results/steps_cifar10.jsonl
RUNS=${RUNS:-runs/cifar10_longer}
mkdir -p "$(dirname "$RUNS")"
{
  nice -n 19 python -m benchmarks.steps_curve cifar10 --methods dm --steps 1000,2000 $P --out $OUT          # lr 0.1
  nice -n 19 python -m benchmarks.steps_curve cifar10 --methods dm --steps 600,1000 $P lr=0.04 --out $OUT   # DM's lr x std^2
} > "$RUNS.a.log" 2>&1 &
{
  nice -n 19 python -m benchmarks.steps_curve cifar10 --methods m3d --steps 1000,2000 $P lr=10 --out $OUT   # lr = IPC
} > "$RUNS.b.log" 2>&1 &
wait
