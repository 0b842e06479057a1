#!/usr/bin/env python
"""The one entry point: ``python pipeline/run.py PRESET [key=value ...]``.

It only calls the installed package, so it also runs when copied elsewhere, as
``ray submit`` does (``python ~/run.py imagenet100``).
"""
import sys

# Run as a script, Python puts pipeline/ first on sys.path. That is harmless: everything is
# imported as m3d_condense.*, and no module in pipeline/ has the name of a standard or installed
# top-level module (tests/test_packaging.py checks both).
from m3d_condense.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
