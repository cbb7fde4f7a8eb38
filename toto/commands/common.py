"""What the subcommands share: usage errors, number options, the ``--device`` option, its availability check, timing sync, and device names."""

from __future__ import annotations

import argparse
import math
import platform
import sys

import torch


class UsageError(Exception):
    """A user mistake: one error line on stderr, exit code 2."""


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default, help="default: %(default)s")


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used here, as a usage-error message, or None."""
    if device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: CUDA is not available on this machine; use --device cpu"
    return None


def device_unavailable(prog: str, device: str) -> bool:
    """Print the usage error and return True when ``device`` cannot be used here."""
    problem = device_problem(device)
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
    return problem is not None


def sync(device: str) -> None:
    """Wait for queued GPU work, so that wall-clock timings are honest."""
    if device == "cuda":
        torch.cuda.synchronize()


def describe(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
