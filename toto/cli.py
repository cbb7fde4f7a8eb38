"""The ``toto-compiled`` command: ``check``, ``forecast``, ``backtest``, ``detect``, ``bench``, ``export``
and ``finetune`` (each in ``toto/commands``). Building the parsers imports no torch: ``--help`` is fast."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .commands import backtest, bench, check, detect, export, finetune, forecast
from .commands.errors import run_command

COMMANDS = (check, forecast, backtest, detect, bench, export, finetune)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toto-compiled",
        description="Datadog's Toto forecasting model, rebuilt for torch.compile.",
    )
    parser.add_argument("--version", action="version", version=f"toto-compiled {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command; a user error (:class:`toto.errors.UserError`) is one ``error:`` line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return run_command(args, f"toto-compiled {args.command}")


if __name__ == "__main__":
    sys.exit(main())
