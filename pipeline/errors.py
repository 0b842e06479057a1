"""The one base class of the failures a user can fix: a config value, a dataset, a run directory
that cannot be resumed, missing resources. The command line prints these as one line (``error:
...``) and exits with status 2; any other exception is a bug and keeps its traceback."""


class RunError(Exception):
    """An expected failure; the message says what is wrong and names the key, file or URL."""
