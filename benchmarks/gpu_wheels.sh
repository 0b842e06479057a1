#!/usr/bin/env bash
# Fetch here what a GPU machine without network access lacks to run benchmarks/gpu_suite.py:
#   .whl/        wheels for Python 3.12 on manylinux x86-64 of hydra-core, omegaconf and
#                antlr4-python3-runtime (the import closure of pipeline.config; that machine has
#                torch, numpy, pyarrow, fsspec, PyYAML, packaging, ... but not these). Not Ray:
#                the suite runs the engine in-process and never imports it.
#   data/mnist/  a copy of MNIST (train.npz, test.npz) for the suite's full protocol, when
#                MNIST_SRC (default ../shared/data/mnist) holds it.
# Both are git-ignored; they travel beside the working tree. Prints what travels and its size.
#
#   bash benchmarks/gpu_wheels.sh            # from the repository root or anywhere
#
# Versions are the ones installed here (pip install -e ".[dev]"), so both machines run the same.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.whl
MNIST_SRC=${MNIST_SRC:-../shared/data/mnist}

installed() {  # the version of a package installed here
  python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"
}

rm -rf "$DEST"
mkdir -p "$DEST"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$DEST" \
  "hydra-core==$(installed hydra-core)" "omegaconf==$(installed omegaconf)"
# antlr4-python3-runtime 4.9.x (what omegaconf 2.3 and hydra 1.3 pin) is published as a source
# archive only; it is pure Python, so the wheel built here (py3-none-any) installs there too.
python -m pip wheel -q --no-deps -w "$DEST" "antlr4-python3-runtime==$(installed antlr4-python3-runtime)"

if [ -f "$MNIST_SRC/train.npz" ]; then
  mkdir -p data/mnist
  install -m 0644 "$MNIST_SRC/train.npz" "$MNIST_SRC/test.npz" data/mnist/
fi

# What travels: tracked files, untracked files git does not ignore, and the two carried folders.
python - "$DEST" data/mnist <<'EOF'
import os, subprocess, sys
def size(paths):
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
def listed(*args):
    return [p for p in subprocess.run(["git", "ls-files", "-z", *args], capture_output=True, check=True).stdout.decode().split("\0") if p]
def tree(folder):
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
parts = {"tracked": size(listed()), "untracked, not ignored": size(listed("--others", "--exclude-standard"))}
parts.update({folder: size(tree(folder)) for folder in sys.argv[1:]})
for name, n in parts.items():
    print(f"{name:>24}: {n / 2**20:6.1f} MiB")
total = sum(parts.values())
print(f"{'total':>24}: {total / 2**20:6.1f} MiB (limit 64 MiB)")
print("wheels:", ", ".join(sorted(os.listdir(sys.argv[1]))))
sys.exit(0 if total < 64 * 2**20 else 1)
EOF
