"""Subcommands of ``toto-compiled``. Each module has ``add_parser(subparsers)``, which sets ``run(args) -> exit code``;
a user mistake raises a :class:`toto.errors.UserError` (see :mod:`.errors`), reported once by ``toto.cli``."""
