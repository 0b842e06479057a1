"""m3d_condense: this repository's ``kernels/``, ``models/``, ``pipeline/`` and ``configs/``
under one import name (``pip install`` maps the folders with setuptools' ``package-dir``), so
nothing generic such as ``models`` or ``pipeline`` lands in site-packages."""
