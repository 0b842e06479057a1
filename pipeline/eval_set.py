#!/usr/bin/env python
"""``python pipeline/eval_set.py TRAIN TEST [--preset PRESET] [key=value ...]``: score any training
set under our evaluation protocol (networks trained from scratch on TRAIN, tested on TEST), the
DC-Bench / DD-Ranking use: compare other methods' condensed sets or coresets with ours.

  python pipeline/eval_set.py runs/cifar10_m3d_gaussian_ipc10_s0 data/cifar10 --preset cifar10
  python pipeline/eval_set.py their_set/ data/cifar10 --preset cifar10 eval.runs=5

TRAIN: a run directory (its synthetic set), an ImageFolder tree (train/<class>/*.png), a
prepared data root or any local dataset ``pipeline/prepare.py`` reads (its train split).
TEST: a prepared data root, an ImageFolder tree with val/ or test/, or any such dataset (its
test split). The preset gives the recipe (README, "Evaluation"); ``custom`` measures the
normalisation on TEST. Prints one line per architecture and, with --out, writes the records
(summary.json's ``evals``) as JSON.
"""
import argparse
import json
import sys

from m3d_condense.pipeline.api import evaluate
from m3d_condense.pipeline.errors import RunError, command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python pipeline/eval_set.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train", metavar="TRAIN", help="run directory, ImageFolder, or data root (train split)")
    p.add_argument("test", metavar="TEST", help="data root or ImageFolder (test split)")
    p.add_argument("--preset", default="custom", help="evaluation recipe of this preset (default: custom)")
    p.add_argument("--out", metavar="JSON", help="write the records here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. eval.runs=5")
    return p


@command
def main(argv: list[str] | None = None) -> int:
    a = parser().parse_intermixed_args(argv)
    overrides = dict(_split(o) for o in a.overrides)
    records = evaluate(a.train, a.test, preset=a.preset, progress=not a.no_progress, **overrides)
    for r in records:
        print(f"{r['arch']}: {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}% "
              f"({len(r['runs'])} runs, {r['epochs']} epochs, last epoch)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(records, f, indent=2)
    return 0


def _split(override: str) -> tuple[str, str]:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise RunError(f"{override!r}: overrides are key=value")
    return key, value


if __name__ == "__main__":
    sys.exit(main())
