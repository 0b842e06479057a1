#!/bin/bash
# The CIFAR-10 IPC 10 budget runs of BENCHMARKS.md ("CIFAR-10, IPC 10, budget protocol"), as run
# on cpu-2c: two processes, 1 thread each. Protocol: the issue's, so before/after compare
# directly: seed 3, real batch 128, factor 2, ConvNet-3; each step count evaluated with 200-epoch
# runs, tested at the last epoch.
#   first   (about 2 hours) M3D at lr 1 and lr 10 to 1000 iterations, the linear kernel at lr 0.1
#           to 600, random and herding; one evaluation run each
#   longer  (about 2 h 20 min) M3D at lr 10 and the linear kernel at lr 0.1 to 2000 iterations, two
#           evaluation runs each, one process per kernel (the 1000-iteration rows with two runs
#           come from an earlier run of this part, which also stepped to 1000)
#   small   (about 3 hours, one process) the linear kernel at lr 0.04 to 600 iterations; IPC 1 and
#           IPC 50 at a smaller budget: random and herding, M3D at lr = IPC and the linear kernel
#           (IPC 1 at lr 0.01, where 0.1 diverges); one evaluation run each, at low priority
#   ipc50   (about 100 minutes) small's two IPC 50 kernel cells and M3D at lr 1 (the preset's then)
#           beside them (whether lr = IPC also holds at IPC 50), one process each (three on 2
#           cores); then the initial set in the third
# Usage: bash benchmarks/cifar10_budget.sh [first|longer|small|ipc50]   (prepares ../shared/data/cifar10 into data/cifar10 first)
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-first}
[ -f data/cifar10/manifest.parquet ] || python pipeline/prepare.py ../shared/data/cifar10 data/cifar10 --no-progress
export OMP_NUM_THREADS=1
OUT=benchmarks/results/steps_cifar10.jsonl
RUNS=${RUNS:-runs/cifar10_budget}
mkdir -p "$(dirname "$RUNS")"
curve() { python -m benchmarks.steps_curve cifar10 --out $OUT "$@"; }

case "$PART" in
first)
  P="data.root=data/cifar10 ipc=10 eval.runs=1 eval.epochs=200 eval.test_every=200 seed=3"
  {
    curve --methods m3d --steps 0,300,600 $P lr=1   # lr 1 (the preset's then)
    curve --methods dm --steps 600 $P               # linear kernel, lr 0.1
  } > "$RUNS.a.log" 2>&1 &
  {
    curve --methods m3d --steps 300,600,1000 $P lr=10  # lr = IPC
    python pipeline/run.py cifar10 method=random $P diagnostics.moments=false out_dir=$RUNS
    python pipeline/run.py cifar10 method=herding $P diagnostics.moments=false out_dir=$RUNS
  } > "$RUNS.b.log" 2>&1 &
  ;;
longer)
  P="data.root=data/cifar10 ipc=10 eval.runs=2 eval.epochs=200 eval.test_every=200 seed=3 backend=local"
  curve --methods dm --steps 2000 $P > "$RUNS.longer.a.log" 2>&1 &           # lr 0.1
  curve --methods m3d --steps 2000 $P lr=10 > "$RUNS.longer.b.log" 2>&1 &    # lr = IPC
  ;;
ipc50)
  P="data.root=data/cifar10 ipc=50 eval.runs=1 eval.epochs=200 eval.test_every=200 seed=3 backend=local"
  curve --methods m3d --steps 100 $P lr=50 > "$RUNS.ipc50.a.log" 2>&1 &      # lr = IPC
  curve --methods dm --steps 100 $P > "$RUNS.ipc50.b.log" 2>&1 &             # lr 0.1
  {
    curve --methods m3d --steps 100 $P lr=1     # lr 1 (the preset's then)
    curve --methods m3d --steps 0 $P            # the initial set
  } > "$RUNS.ipc50.c.log" 2>&1 &
  ;;
small)
  P="data.root=data/cifar10 eval.runs=1 eval.epochs=200 eval.test_every=200 seed=3 backend=local"
  low() { nice -n 19 "$@"; }
  {
    low python -m benchmarks.steps_curve cifar10 --out $OUT --methods dm --steps 600 $P ipc=10 lr=0.04  # DM's lr x std^2
    for IPC in 1 50; do
      low python pipeline/run.py cifar10 method=random ipc=$IPC $P diagnostics.moments=false out_dir=$RUNS
      low python pipeline/run.py cifar10 method=herding ipc=$IPC $P diagnostics.moments=false out_dir=$RUNS
    done
    low python -m benchmarks.steps_curve cifar10 --out $OUT --methods m3d --steps 0,300 $P ipc=1 lr=1
    low python -m benchmarks.steps_curve cifar10 --out $OUT --methods dm --steps 300 $P ipc=1 lr=0.01
    low python -m benchmarks.steps_curve cifar10 --out $OUT --methods m3d --steps 100 $P ipc=50 lr=50
    low python -m benchmarks.steps_curve cifar10 --out $OUT --methods dm --steps 100 $P ipc=50
  } > "$RUNS.small.log" 2>&1 &
  ;;
*) echo "usage: bash benchmarks/cifar10_budget.sh [first|longer|small|ipc50]" >&2; exit 2 ;;
esac
wait
