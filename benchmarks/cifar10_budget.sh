#!/bin/bash
# The CIFAR-10 IPC 10 budget runs of BENCHMARKS.md ("CIFAR-10, IPC 10, budget protocol"), as run
# on cpu-2c: one process per line group, 1 thread each (2 cores), about 2 hours in all.
# Protocol: the issue's, so before/after compare directly: seed 3, real batch 128, factor 2,
# ConvNet-3; each step count evaluated once, 200 epochs, tested at the last one.
# Usage: bash benchmarks/cifar10_budget.sh   (prepares ../shared/data/cifar10 into data/cifar10 first)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/cifar10/manifest.parquet ] || python pipeline/prepare.py ../shared/data/cifar10 data/cifar10 --no-progress
export OMP_NUM_THREADS=1
P="data.root=data/cifar10 ipc=10 eval.runs=1 eval.epochs=200 eval.test_every=200 seed=3"
OUT=benchmarks/results/steps_cifar10.jsonl
RUNS=${RUNS:-runs/cifar10_budget}
mkdir -p "$(dirname "$RUNS")"
{
  python -m benchmarks.steps_curve cifar10 --methods m3d --steps 0,300,600 $P --out $OUT        # lr 1 (preset)
  python -m benchmarks.steps_curve cifar10 --methods dm --steps 600 $P --out $OUT               # linear kernel, lr 0.1
} > "$RUNS.a.log" 2>&1 &
{
  python -m benchmarks.steps_curve cifar10 --methods m3d --steps 300,600,1000 $P lr=10 --out $OUT  # lr = IPC
  python pipeline/run.py cifar10 method=random $P diagnostics.moments=false out_dir=$RUNS
  python pipeline/run.py cifar10 method=herding $P diagnostics.moments=false out_dir=$RUNS
} > "$RUNS.b.log" 2>&1 &
wait
