"""The one base class of the failures a user can fix (a config value, a dataset, a run directory
that cannot be resumed, missing resources), and the one error policy of every command
(``command``): these print as one line (``error: ...``) and exit with status 2; any other
exception is a bug and keeps its traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class RunError(Exception):
    """An expected failure; the message says what is wrong and names the key, file or URL."""


# What a command reports as one line: RunError, and a path the user named that is missing or
# not readable (the OS's own message names it).
USER_ERRORS = (RunError, FileNotFoundError, PermissionError)


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A command's ``main(argv) -> exit status`` under the one error policy: a ``USER_ERRORS``
    failure prints ``error: <message>`` on stderr and returns 2."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run
