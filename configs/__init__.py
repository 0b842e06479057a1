"""Preset YAMLs, shipped as package data so Hydra finds them wherever run.py lives. Each one
lists ``base`` first in its defaults: the schema of every key, ``RunConfig`` in
pipeline/config/schema.py, which pipeline/config/loader.py registers under that name. A preset only overrides it."""
