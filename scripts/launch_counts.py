"""Print ATen ops dispatched outside compiled graphs per forecast call (the CPU stand-in for kernel launches).

Tiny random-weight model (patch 16) with 2 and 4 layers; the benchmark scenarios S1-S3 in
patches; eager, and compiled with the whole call (``compile_prefill=True``) or only the
decode steps. Usage: ``python scripts/launch_counts.py [--backend aot_eager|inductor]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from checkpoints import TINY_CONFIG, write_checkpoint  # noqa: E402
from test_launches import SCENARIOS, launches  # noqa: E402

from toto import Toto, TotoForecaster  # noqa: E402

SETUPS = {
    "eager": {"torch_compile": False},
    "compiled, decode steps only": {"torch_compile": True, "compile_prefill": False},
    "compiled, whole call": {"torch_compile": True, "compile_prefill": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default: %(default)s)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, backend {args.backend}, tiny model (patch 16)")
    print("| setup | layers | S1 | S2 | S3 |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            layers: Toto.load_from_checkpoint(
                write_checkpoint(Path(tmp) / f"l{layers}", {**TINY_CONFIG, "num_layers": layers}, seed=3)
            ).model
            for layers in (2, 4)
        }
        for setup, options in SETUPS.items():
            for layers, model in models.items():
                cells = []
                for scenario in sorted(SCENARIOS):
                    torch._dynamo.reset()
                    backend = {"compile_backend": args.backend} if options["torch_compile"] else {}
                    count, steps = launches(TotoForecaster(model, **options, **backend), scenario)
                    cells.append(f"{count} ({steps} steps)")
                print(f"| {setup} | {layers} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
