"""A run's configuration: ``schema`` (plain dataclasses: every key, its type, default and
meaning) and ``loader`` (Hydra composes a preset with overrides into a ``RunConfig``). Import
from the module you need: the schema imports no Hydra."""
