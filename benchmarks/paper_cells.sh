#!/bin/bash
# The paper-protocol cells of BENCHMARKS.md ("The paper protocol"), in the order the table fills,
# as two lanes of one thread each (one per core). Each cell is `python pipeline/reproduce.py cell`,
# which continues where it stopped, so rerunning a lane skips what is done:
#   python -m benchmarks.paper_state restore            # cells saved by an earlier machine
#   bash benchmarks/paper_cells.sh 1 & bash benchmarks/paper_cells.sh 2 &
#   python -m benchmarks.paper_state save               # before the machine goes: commit the result
# Runs and rows go to ~/m3d-paper; logs to ~/m3d-paper/lane<N>.log; PYTHON picks the interpreter
# (e.g. a venv holding a fixed commit: long runs should not see edits to the tree). DATA holds mnist/,
# fashion_mnist/ and cifar10/ prepared as in docs/data.md (or their train.npz/test.npz copies).
# fp32 throughout: the reference precision (bf16 is slower than fp32 on CPUs without AVX-512 BF16).
# IPC 10 cells: 5 evaluation runs and a snapshot scored every 1000 iterations (one 1000-epoch
# run costs about 45 min of one core there); IPC 1 cells: 10 runs, a snapshot every 500.
set -u
cd "$(dirname "$0")/.."
DATA=${2:-../shared/data}
LOG=$HOME/m3d-paper/lane$1.log
mkdir -p "$HOME/m3d-paper"
export OMP_NUM_THREADS=1 TQDM_DISABLE=1
COMMON="checkpoint_every=50 compile=true eval.compile=true"
cell() {  # PRESET IPC [options]
  "${PYTHON:-python}" pipeline/reproduce.py cell "$@" --no-progress data.root="$DATA/$1" $COMMON >> "$LOG" 2>&1
}
case $1 in
  1) cell cifar10 10 --runs 5 --select-every 1000
     cell mnist 10 --runs 5 --select-every 1000
     cell fashion_mnist 10 --runs 5 --select-every 1000
     cell cifar10 10 --method dm --runs 5 --select-every 1000 ;;
  2) cell cifar10 1 --runs 10
     cell mnist 1 --runs 10
     cell fashion_mnist 1 --runs 10 ;;
  *) echo "usage: $0 1|2 [DATA]" >&2; exit 2 ;;
esac
