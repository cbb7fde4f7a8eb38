"""Errors a user can fix, and error text reduced to one line.

Imports nothing from the package (nor torch): the commands' ``--help`` path, the data-file
readers and the Ray engine all use it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (an option, a file, a cell): the command prints
    ``PROG: error: MESSAGE`` on one line and exits with ``exit_code``, no traceback."""

    exit_code = 2


def one_line(err: BaseException | str, *, last: bool = False) -> str:
    """``err``'s message as one line: its first (or ``last``) non-blank line, runs of spaces collapsed.

    Ray, pandas and pyarrow messages run over many lines (a traceback, a hint); the first
    says what went wrong, except for a Ray actor's failure, whose last line is ``Type: message``.
    An empty message gives the exception type's name.
    """
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__ if isinstance(err, BaseException) else ""
    return lines[-1] if last else lines[0]
