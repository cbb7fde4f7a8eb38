"""Subcommands of ``toto-compiled``. Each module has ``add_parser(subparsers)``, which sets ``run(args) -> exit code``."""
