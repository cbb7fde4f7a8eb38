"""Run the ``toto-compiled`` command in-process on a checkpoint, for the CLI tests."""

from __future__ import annotations

from pathlib import Path

from toto.cli import main


def cli(capsys, checkpoint: Path, command: str, *args: str) -> tuple[int, str, str]:
    """``main`` in-process on the tiny model: (exit code, stdout, stderr); argparse exits count as codes."""
    argv = [command, "--model", str(checkpoint), "--device", "cpu", "--no-compile", "--num-samples", "16", *args]
    return run_main(capsys, argv)


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr); argparse exits count as codes."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
