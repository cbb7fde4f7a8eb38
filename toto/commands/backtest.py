"""``toto-compiled backtest``: forecast the last windows of every item of a long file and score them.

:func:`toto.evaluation.backtest` on a long CSV or Parquet file; prints Toto's and seasonal
naive's metrics on stdout and can write the per-(item, window, target) metrics, the window
forecasts and a plot of one item, all moved into place together at the end. ``--engine ray``
runs :func:`toto.engines.ray.backtest_dataset` on a Ray cluster (no plot: it needs the whole input).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Hashable

from .common import _finite, _positive_int, add_device_argument, check_device
from .errors import UsageError
from .options import (
    DEFAULT_BATCH_SIZE,
    LongInput,
    add_model_argument,
    check_model,
    frame_levels,
    forecast_error,
    add_block_size_argument,
    add_sampling_arguments,
    apply_block_size,
    frame_options,
    block_size_options,
    model_config,
    load_pipeline,
    names,
    quantiles,
    read_long_input,
)
from .ray_engine import (
    add_engine_arguments,
    check_engine,
    check_output_folder,
    connect_ray,
    ray_errors,
    write_ray_folder,
)
from ..frames.io import DataFileError, check_output_path, frame_writer, pandas_module, staged_outputs

DESCRIPTION = (
    "Forecast the last --windows windows of every item of a long CSV or Parquet file (one row per item and "
    "timestamp) and score them against seasonal naive: MASE, WQL, MAE, RMSE and interval coverage. "
    "With --engine ray, model workers on a Ray cluster forecast the windows."
)
DEFAULT_QUANTILES = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
MODEL_COLUMN, BASELINE_COLUMN = "toto", "seasonal_naive"
PLOT_SPANS = 4  # the plot shows the last 4 times the steps the windows cover, so the windows stay readable


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "backtest", help="score rolling-origin forecasts of a long CSV or Parquet file", description=DESCRIPTION
    )
    add = parser.add_argument
    add_model_argument(parser)
    add("--input", required=True, type=Path,
        help="long-format .csv, .parquet or .pq file (with --engine ray also a folder of Parquet files)")
    add("--id-column", default="item_id", help="default: %(default)s")
    add("--timestamp-column", default="timestamp", help="default: %(default)s")
    add("--target", type=names, default="target", help="comma-separated value column(s) (default: %(default)s)")
    add("--prediction-length", required=True, type=_positive_int, help="steps in each window")
    add("--windows", type=_positive_int, default=1, help="windows per item, ending at its last step (default: 1)")
    add("--stride", type=_positive_int, help="steps between window starts (default: the prediction length)")
    add("--seasonality", type=_positive_int,
        help="season of MASE and seasonal naive (default: from each item's frequency, e.g. hourly 24, daily 1)")
    add("--quantiles", type=quantiles, default=DEFAULT_QUANTILES,
        help="levels strictly inside (0, 1); WQL averages them (default: %(default)s)")
    add("--interval", type=_interval, help="LOW,HIGH: the coverage interval, two of --quantiles "
        "(default: the lowest and highest)")
    add_sampling_arguments(parser)
    add_block_size_argument(parser)
    add("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
        help="series (item windows) forecast at once (default: %(default)s)")
    add("--output", type=Path, help="metrics per (item, window, target): Parquet for .parquet or .pq, else CSV")
    add("--forecasts", type=Path, help="the windows' forecasts: Parquet for .parquet or .pq, else CSV; "
        "with --engine ray: a new folder that receives Parquet files")
    add("--plot", type=Path, help="image of one item's windows (PNG; another format by suffix, e.g. .svg); "
        "not with --engine ray")
    add("--plot-item", help="the item to plot (default: the first)")
    add_device_argument(parser)
    add("--compile", action=argparse.BooleanOptionalAction, help="default: the TOTO_COMPILE variable decides")
    add_engine_arguments(parser, "no --plot")
    parser.set_defaults(run=run)


def _interval(text: str) -> tuple[float, float]:
    parts = [_finite(part) for part in text.split(",")]
    if len(parts) != 2 or None in parts or not 0.0 < parts[0] < parts[1] < 1.0:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 < LOW < HIGH < 1, got {text!r}")
    return parts[0], parts[1]


def run(args: argparse.Namespace) -> int:
    """Read, backtest, print the table, write the files; user mistakes raise (``cli`` reports them)."""
    check_engine(args)
    backtest_command(args)
    return 0


def backtest_command(args: argparse.Namespace) -> None:
    from ..evaluation import backtest

    levels = frame_levels(args.quantiles)
    interval = args.interval or (min(levels), max(levels))
    missing = [level for level in interval if level not in levels]
    if missing:
        raise UsageError(f"--interval {interval[0]:g},{interval[1]:g}: {missing[0]:g} is not among --quantiles")
    if args.plot_item is not None and args.plot is None:
        raise UsageError("--plot-item needs --plot")
    if args.engine == "ray" and args.plot is not None:
        raise UsageError("--plot is not supported with --engine ray (it needs the whole input here); "
                         "use --engine local")
    outputs = {option: path for option, path in (("--output", args.output), ("--forecasts", args.forecasts),
                                                 ("--plot", args.plot)) if path is not None}
    for option, path in outputs.items():
        if option == "--forecasts" and args.engine == "ray":
            check_output_folder(path, option)
        else:
            check_output_path(path, option)
    if len({path.resolve() for path in outputs.values()}) != len(outputs):
        raise UsageError(f"{', '.join(outputs)} must name different files")
    if args.engine == "ray":
        backtest_ray(args, levels, interval, outputs)
        return
    image_format = _image_format(args.plot) if args.plot is not None else None
    check_device(args.device)
    check_model(args.model)
    long_input = read_long_input(args)
    plot_item = _plot_item(long_input, args.plot_item) if args.plot is not None else None
    print(long_input.describe(), file=sys.stderr)
    pipeline = load_pipeline(args)
    apply_block_size(args, pipeline)
    stride = args.stride or args.prediction_length
    print(f"backtesting {args.windows} window(s) of {args.prediction_length} steps, stride {stride}",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        options = backtest_options(args, levels, interval, stride, pipeline.family)
        result = backtest(pipeline, long_input.data.frame, **options)
    except ValueError as err:  # CellError included
        raise forecast_error(err, long_input) from None
    elapsed = time.perf_counter() - started

    with staged_outputs() as staged:
        if args.output is not None:
            staged.write(args.output, frame_writer(result.metrics, args.output))
        if args.forecasts is not None:
            staged.write(args.forecasts, frame_writer(result.forecasts, args.forecasts))
        if args.plot is not None:
            figure = _figure(long_input, result, plot_item, PLOT_SPANS * (args.prediction_length + (args.windows - 1) * stride))
            staged.write(args.plot, lambda temporary: _save_figure(figure, temporary, args.plot, image_format))
    print(summary_table(result, args, stride, elapsed), end="")
    for option, path in outputs.items():
        print(f"wrote {path} ({option})", file=sys.stderr)


def backtest_ray(
    args: argparse.Namespace, levels: list[float], interval: tuple[float, float], outputs: dict[str, Path]
) -> None:
    """--engine ray: :func:`toto.engines.ray.backtest_dataset`; the table and metrics as the local engine's,
    the forecasts as a new folder of Parquet files (written with the metrics file, or neither)."""
    from ..engines.ray import backtest_dataset

    stride = args.stride or args.prediction_length
    check_model(args.model)
    family, config = model_config(args.model)
    options = {**backtest_options(args, levels, interval, stride, family), **block_size_options(args, family, config)}
    workers = connect_ray(args)
    print(f"backtesting {args.windows} window(s) of {args.prediction_length} steps, stride {stride}",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    with ray_errors(args):
        result = backtest_dataset(str(args.input.absolute()), **options, **workers)
        elapsed = time.perf_counter() - started
        with staged_outputs() as staged:
            if args.output is not None:
                staged.write(args.output, frame_writer(result.metrics, args.output))
            if args.forecasts is not None:  # before the metrics file moves into place: a failed job writes neither
                write_ray_folder(result.forecasts, args.forecasts)
    print(summary_table(result, args, stride, elapsed), end="")
    for option, path in outputs.items():
        print(f"wrote {path} ({option})", file=sys.stderr)


def backtest_options(
    args: argparse.Namespace, levels: list[float], interval: tuple[float, float], stride: int, family: Any
) -> dict:
    """The keyword arguments of a backtest on either engine (``family``: the model's)."""
    options = frame_options(args, levels, family)
    return {**options, "windows": args.windows, "stride": stride, "interval": interval, "seasonality": args.seasonality}


def summary_table(result: Any, args: argparse.Namespace, stride: int, elapsed: float) -> str:
    """The header line, then one row per metric: Toto, seasonal naive, their ratio."""
    seasons = sorted(set(result.seasonality.values()))
    season = str(seasons[0]) if len(seasons) == 1 else f"{seasons[0]} to {seasons[-1]} (per item)"
    targets = len(args.target)
    header = (
        f"backtest: {_count(len(result.seasonality), 'item')} x {_count(args.windows, 'window')}, "
        f"horizon {args.prediction_length}, "
        f"stride {stride}, seasonality {season}"
        + (f", {targets} targets" if targets > 1 else "")
        + f"; {elapsed:.1f} s"
    )
    low, high = result.interval
    rows = [["metric", "Toto", "seasonal naive", "ratio", ""]]
    for metric, values in result.summary.iterrows():
        if metric == "coverage":
            note = f"nominal {high - low:.2g} ({low:g} to {high:g} quantiles)"
            rows.append([metric, _number(values[MODEL_COLUMN]), _number(values[BASELINE_COLUMN]), "-", note])
        else:
            rows.append([metric, _number(values[MODEL_COLUMN]), _number(values[BASELINE_COLUMN]),
                         _number(values["ratio"], digits=3), ""])
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = [header]
    for row in rows:
        cells = [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:4], widths[1:]))]
        lines.append("  ".join(cells + ([row[4]] if row[4] else [])))
    return "\n".join(lines) + "\n"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def _number(value: float, digits: int = 4) -> str:
    if value != value:  # NaN
        return "nan"
    if abs(value) >= 1e6:
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def _image_format(path: Path) -> str:
    """The image format for --plot (its suffix, PNG without one); checks that matplotlib is installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError('--plot needs matplotlib: pip install "toto-compiled[plot]"') from None
    fmt = path.suffix[1:].lower() or "png"
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise UsageError(f"--plot {path}: unsupported image type {fmt!r}; use one of {', '.join(sorted(supported))}")
    return fmt


def _plot_item(long_input: LongInput, text: str | None) -> Hashable:
    """The item --plot-item names (compared as text), or the file's first item."""
    ids = long_input.data.frame[long_input.id_column].dropna().unique()
    if text is None:
        return ids[0] if len(ids) else None
    for item in ids:
        if str(item) == text:
            return item
    shown = ", ".join(str(item) for item in ids[:10]) + (", ..." if len(ids) > 10 else "")
    raise UsageError(f"--plot-item {text!r}: no such item in {long_input.data.path}; its items: {shown}")


def _figure(long_input: LongInput, result: Any, item: Hashable, max_history: int) -> Any:
    """:func:`toto.frames.plot.plot_backtest` of ``item``: the end of its series as read (on its grid), and its windows."""
    from ..frames.panel import read_panel
    from ..frames.plot import plot_backtest

    pd = pandas_module()
    # The frame is valid (the backtest read it); read_panel gives the item's parsed grid and values.
    panel = read_panel(
        long_input.data.frame, id_column=long_input.id_column, timestamp_column=long_input.timestamp_column,
        target=long_input.targets, prediction_length=1,
    )
    series = next(entry for entry in panel.items if entry.item_id == item)
    history = pd.DataFrame({
        long_input.id_column: [series.item_id] * len(series.timestamps),
        long_input.timestamp_column: series.timestamps,
        **{name: values for name, values in zip(panel.targets, series.values)},
    })
    return plot_backtest(
        history, result.forecasts, item_id=item, id_column=long_input.id_column,
        timestamp_column=long_input.timestamp_column, target=list(panel.targets), interval=result.interval,
        max_history=max_history,
    )


def _save_figure(figure: Any, temporary: Path, path: Path, image_format: str) -> None:
    from ..frames.plot import DPI

    try:
        figure.savefig(temporary, format=image_format, dpi=DPI)
    except (OSError, ValueError) as err:
        raise DataFileError(f"cannot write {path} ({err})") from None
