"""``toto-compiled detect``: per-step anomaly scores of a wide CSV (one multivariate series) or of
every item of a long CSV or Parquet file, with an optional plot of the flagged steps.

Scores are :meth:`TotoPipeline.detect_anomalies`'s: the negative log-likelihood of each observed
value under the model's prediction from everything before its patch, the two-sided tail
probability under that prediction, and a flag where it is below ``--false-alarm-rate``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..frames.io import PARQUET_SUFFIXES, check_output_path, frame_writer, output_format, pandas_module, staged_outputs
from .backtest import _image_format, _plot_item, _save_figure
from .common import _finite, _positive_int, add_device_argument, check_device
from .errors import UsageError
from .options import add_model_argument, check_model, forecast_error, load_pipeline, names, read_long_input
from .wide import read_table

DESCRIPTION = (
    "Score every observed step of a wide CSV file (its value columns are the variates of one series) or of "
    "every item of a long CSV or Parquet file (selected by --id-column or --target): negative log-likelihood, "
    "two-sided tail probability and a flag at --false-alarm-rate. Needs scipy "
    '(pip install "toto-compiled[monitoring]"). Toto 2.0 has no density: its tail probabilities are approximate.'
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("detect", help="flag anomalies in a wide CSV file or the items of a long file",
                                   description=DESCRIPTION)  # fmt: skip
    add = parser.add_argument
    add_model_argument(parser)
    add("--input", required=True, type=Path, help="wide: CSV with a header row; long: .csv, .parquet or .pq")
    add("--columns", type=names, help="wide: comma-separated value columns (default: all but the timestamp column)")
    add("--timestamp-column", help="wide: column of times (else steps are numbered); long: the time column "
                                   "(default there: timestamp)")  # fmt: skip
    add("--id-column", help="long format: the item id column (default there: item_id)")
    add("--target", type=names, help="long format: comma-separated value column(s) scored together (default: target)")
    add("--false-alarm-rate", type=_rate, default=0.001, metavar="P",
        help="flag steps whose tail probability is below P (default: %(default)s)")
    add("--batch-size", type=_positive_int, help="long format: items of one length scored at once (default: all)")
    add("--output", type=Path, help="scores: Parquet for a .parquet or .pq suffix, else CSV (default: CSV on stdout)")
    add("--plot", type=Path, help="image of one item's values with the flagged steps marked (extra plot)")
    add("--plot-item", help="long format: the item to plot (default: the file's first)")
    add_device_argument(parser)
    add("--compile", action=argparse.BooleanOptionalAction, help="default: the TOTO_COMPILE variable decides")
    parser.set_defaults(run=run)


def _rate(text: str) -> float:
    value = _finite(text)
    if value is None or not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    long = bool(args.id_column or args.target or args.input.suffix.lower() in PARQUET_SUFFIXES)
    if args.plot_item is not None and (args.plot is None or not long):
        raise UsageError("--plot-item needs --plot and long format (--id-column)")
    if long and args.columns is not None:
        raise UsageError("--columns is for wide CSV; in long format name the value columns with --target")
    if not long and args.batch_size is not None:
        raise UsageError("--batch-size is for long format (--id-column, --target); a wide CSV is a single series")
    outputs = {option: path for option, path in (("--output", args.output), ("--plot", args.plot)) if path}
    for option, path in outputs.items():
        check_output_path(path, option)
    if len({path.resolve() for path in outputs.values()}) != len(outputs):
        raise UsageError("--output and --plot must name different files")
    if args.output is not None and not long and output_format(args.output) == "parquet":
        raise UsageError(f"--output {args.output}: wide mode writes CSV; Parquet is for long format (--id-column)")
    image_format = _image_format(args.plot) if args.plot is not None else None
    check_device(args.device)
    check_model(args.model)
    scores, id_column, timestamp_column, item = (_long if long else _wide)(args)
    flagged, scored = int(scores["anomaly"].sum()), int(scores["nll"].notna().sum())
    print(f"scored {scored} steps; {flagged} flagged at a false-alarm rate of {args.false_alarm_rate:g}", file=sys.stderr)
    with staged_outputs() as staged:
        if args.output is not None:
            staged.write(args.output, frame_writer(scores, args.output))
        if args.plot is not None:
            from ..frames.plot import plot_anomalies

            figure = plot_anomalies(scores, item_id=item, id_column=id_column, timestamp_column=timestamp_column)
            staged.write(args.plot, lambda temporary: _save_figure(figure, temporary, args.plot, image_format))
    if args.output is None:
        scores.to_csv(sys.stdout, index=False)
    return 0


def _wide(args: argparse.Namespace) -> tuple[Any, None, str, None]:
    import numpy as np

    table = read_table(args.input, args.columns, args.timestamp_column)
    pipeline = _pipeline(args)
    try:
        (scores,) = pipeline.detect_anomalies(table.values[None].astype(np.float32),
                                              false_alarm_rate=args.false_alarm_rate)  # fmt: skip
    except ValueError as err:
        raise forecast_error(err) from None
    pd = pandas_module()
    steps = table.values.shape[1]
    timestamp_column = args.timestamp_column or "step"
    times = table.timeline.stamps if table.timeline is not None else np.arange(steps)
    frame = pd.DataFrame({
        timestamp_column: np.tile(np.asarray(times), len(table.columns)),
        "target_name": np.repeat(np.array(table.columns, dtype=object), steps),
        "value": table.values.ravel(),
        "nll": scores.nll.ravel(),
        "tail_probability": scores.tail_probability.ravel(),
        "anomaly": scores.anomaly.ravel(),
    })  # fmt: skip
    return frame, None, timestamp_column, None


def _long(args: argparse.Namespace) -> tuple[Any, str, str, Any]:
    long_input = read_long_input(args)
    item = _plot_item(long_input, args.plot_item) if args.plot is not None else None
    print(long_input.describe(), file=sys.stderr)
    pipeline = _pipeline(args)
    try:
        frame = pipeline.detect_anomalies_df(
            long_input.data.frame, id_column=long_input.id_column, timestamp_column=long_input.timestamp_column,
            target=long_input.targets, false_alarm_rate=args.false_alarm_rate, batch_size=args.batch_size,
        )  # fmt: skip
    except ValueError as err:  # CellError included
        raise forecast_error(err, long_input) from None
    return frame, long_input.id_column, long_input.timestamp_column, item


def _pipeline(args: argparse.Namespace) -> Any:
    pipeline = load_pipeline(args)
    if pipeline.family.output != "samples":
        print(f"{pipeline.family.name} has no density: nll is empty, and tail probabilities are approximate "
              "(from its quantiles)", file=sys.stderr)  # fmt: skip
    return pipeline
