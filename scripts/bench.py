"""Benchmark upstream toto-ts and ours, eager and compiled: ``toto-compiled bench`` from a checkout.

    python scripts/bench.py [--device cuda] [--scenarios S1,S2] [--runners ours-eager,ours-compiled]
                            [--dtype bfloat16] [--repeats 3] [--runner-timeout 90] [--json out.json]

Looks for the oracle in the checkout's .oracle/ (python scripts/install_oracle.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toto.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "--oracle", str(ROOT / ".oracle"), *sys.argv[1:]]))
