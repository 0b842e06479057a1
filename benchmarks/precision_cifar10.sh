#!/bin/bash
# bf16 vs fp32 on a CIFAR-10 IPC 10 budget run (BENCHMARKS.md, "Precision"): does bf16 change
# the accuracy of condensation (precision=bf16) or of evaluation (eval.precision=bf16)?
# Protocol: the CIFAR-10 budget protocol's best cell (M3D lr 10, 1000 iterations, seed 3,
# compiled), each set evaluated twice for 200 epochs (compiled), tested at the last epoch.
#   1. condense in fp32, evaluate in fp32      2. condense in bf16, evaluate in fp32
#   3. set 1 evaluated again in bf16
# Usage: bash benchmarks/precision_cifar10.sh [RUNS_DIR]   (about 45 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/precision_cifar10}
OUT=benchmarks/results/precision_cifar10
mkdir -p "$OUT"
P="data.root=../shared/data/cifar10 ipc=10 lr=10 iterations=1000 seed=3 compile=true diagnostics.moments=false
   eval.runs=2 eval.epochs=200 eval.test_every=200 eval.compile=true out_dir=$RUNS backend=local"
python pipeline/run.py cifar10 $P run_name=fp32
cp "$RUNS/fp32/summary.json" "$OUT/condense_fp32_eval_fp32.summary.json"
python pipeline/run.py cifar10 $P precision=bf16 run_name=bf16
cp "$RUNS/bf16/summary.json" "$OUT/condense_bf16_eval_fp32.summary.json"
python pipeline/run.py cifar10 $P run_name=fp32 reevaluate=true eval.precision=bf16
cp "$RUNS/fp32/summary.json" "$OUT/condense_fp32_eval_bf16.summary.json"
python - "$OUT" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.summary.json")):
    s = json.loads(f.read_text()); e = s["eval"]
    print(f"{f.name.removesuffix('.summary.json'):28s} {100 * e['accuracy_mean']:.2f} +- {100 * e['accuracy_std']:.2f} "
          f"runs {[round(100 * a, 2) for a in e['runs']]} condense {s.get('condense_seconds', 0):.0f}s eval {e.get('seconds')}")
PY
