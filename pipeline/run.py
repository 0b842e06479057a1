#!/usr/bin/env python
"""The one entry point: ``python pipeline/run.py PRESET [key=value ...]``.

It only calls the installed package, so it also runs when copied elsewhere, as
``ray submit`` does (``python ~/run.py imagenet100``).
"""
import os
import sys

# Run as a script from the source tree, Python puts pipeline/ first on sys.path, where its
# modules (config, datasets, ...) could shadow other top-level modules. Drop that entry.
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0]) == _here and os.path.exists(os.path.join(_here, "cli.py")):
    sys.path.pop(0)

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
