"""The commands' errors, one tree under :class:`toto.errors.UserError`, reported in one place.

:class:`UsageError` (and :class:`toto.frames.io.DataFileError`) exit 2, :class:`CommandFailed` 1;
:func:`run_command` prints ``PROG: error: MESSAGE`` for any of them instead of a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError

__all__ = ["CommandFailed", "UsageError", "UserError", "run_command"]


class UsageError(UserError):
    """A bad option or input: one error line on stderr, exit code 2."""


class CommandFailed(UserError):
    """The command ran but did not succeed (training diverged, say): one error line, exit code 1."""

    exit_code = 1


def run_command(args: argparse.Namespace, prog: str) -> int:
    """``args.run(args)``, its user errors as one ``PROG: error: ...`` line and their exit code."""
    try:
        return args.run(args)
    except UserError as err:
        # Under torchrun every process meets the same mistake: rank 0 alone says it.
        if os.environ.get("RANK", "0") == "0":
            print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
