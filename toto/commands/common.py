"""What the subcommands share: number options, the ``--device`` option and its availability check,
timing sync and device names. torch is imported on first use, so that ``--help`` stays light."""

from __future__ import annotations

import argparse
import math
import platform

from .errors import UsageError

__all__ = ["UsageError", "add_device_argument", "check_device", "describe", "sync"]


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


def resolve_device(text: str) -> str:
    """``auto`` -> ``cuda`` when CUDA is available, else ``cpu``; any other name as given.

    argparse applies it to the default only once the command line is parsed, so building the
    parser (and ``--help``) does not import torch.
    """
    if text != "auto":
        return text
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", type=resolve_device,
                        help="auto: cuda if available, else cpu (default: %(default)s)")


def check_device(device: str) -> None:
    """A :class:`UsageError` when ``device`` cannot be used here."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine; use --device cpu")


def sync(device: str) -> None:
    """Wait for queued GPU work, so that wall-clock timings are honest."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def describe(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
