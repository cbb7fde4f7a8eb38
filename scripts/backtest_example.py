"""Backtest Toto on real data bundled with statsmodels: the README's "Backtesting" example.

    python scripts/backtest_example.py                    # Datadog/Toto-Open-Base-1.0 from the hub
    python scripts/backtest_example.py --model DIR        # a local checkpoint folder
    python scripts/backtest_example.py --random-weights   # offline: published architecture, random weights

Writes five quarterly US macro series (statsmodels' ``macrodata``, 1959-2009) as a long
CSV, then runs ``toto-compiled backtest`` on it: 4 windows of 8 quarters, 4 quarters
apart, with the metrics, the window forecasts and a plot of real GDP beside the CSV.
Needs ``pip install statsmodels "toto-compiled[pandas,plot]"``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from toto.cli import main as toto_main
from toto.config import PUBLISHED_CONFIG
from toto.checkpoints.reading import DEFAULT_MODEL_ID
from toto.checkpoints.random_weights import write_checkpoint

SERIES = ["realgdp", "realcons", "realinv", "cpi", "unemp"]


def macro_long_frame():
    """statsmodels' macrodata as a long frame: item_id, timestamp (quarter start), target."""
    import pandas as pd
    import statsmodels.api as sm

    macro = sm.datasets.macrodata.load_pandas().data
    quarters = pd.PeriodIndex.from_fields(year=macro.year.astype(int), quarter=macro.quarter.astype(int))
    wide = macro[SERIES].set_index(quarters.to_timestamp()).rename_axis("timestamp")
    return wide.reset_index().melt(id_vars="timestamp", var_name="item_id", value_name="target")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help="hub id or local checkpoint folder")
    parser.add_argument("--random-weights", action="store_true", help="published architecture with random weights")
    parser.add_argument("--out", type=Path, default=Path("backtest_example"), help="folder for the files")
    parser.add_argument("--plot", type=Path, help="PNG path (default: OUT/backtest.png)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.out / "macro.csv"
    macro_long_frame().to_csv(data, index=False)
    print(f"wrote {data}: {', '.join(SERIES)} (quarterly, statsmodels macrodata)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.random_weights:
            print("RANDOM weights: the table shows the command works, not forecast quality", file=sys.stderr)
            model = str(write_checkpoint(Path(tmp), PUBLISHED_CONFIG, seed=0))
        return toto_main([
            "backtest", "--model", model, "--input", str(data), "--prediction-length", "8", "--windows", "4",
            "--stride", "4", "--seed", "0", "--output", str(args.out / "metrics.csv"),
            "--forecasts", str(args.out / "forecasts.csv"), "--plot", str(args.plot or args.out / "backtest.png"),
            "--plot-item", "realgdp",
        ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
