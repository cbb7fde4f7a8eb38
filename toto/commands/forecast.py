"""``toto-compiled forecast``: forecast a wide CSV as one multivariate series, or every item of a long file.

Wide mode (the default; :mod:`.wide`): the value columns of a CSV file are the variates of one
series; the output has one row per (column, step). Long mode (``--id-column``, ``--target``,
``--future``, or a Parquet input): :meth:`TotoPipeline.predict_df` on every item. ``--engine ray``
(long mode only) forecasts on a Ray cluster into a new folder of Parquet files. Outputs are
written to temporary files and moved into place whole.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from ..frames.io import (
    PARQUET_SUFFIXES,
    check_output_path,
    frame_writer,
    output_format,
    pandas_module,
    staged_outputs,
)
from .common import _positive_int, add_device_argument, check_device
from .errors import UsageError
from .options import (
    DEFAULT_BATCH_SIZE,
    add_model_argument,
    check_model,
    frame_levels,
    add_block_size_argument,
    add_sampling_arguments,
    apply_block_size,
    frame_options,
    block_size_options,
    model_config,
    sampling_options,
    horizon_error,
    load_pipeline,
    forecast_error,
    names,
    quantiles,
    read_long_input,
)
from .ray_engine import add_engine_arguments, check_engine, check_output_folder, connect_ray, ray_errors, write_ray_folder
from .wide import read_table, write_forecast

DESCRIPTION = (
    "Forecast the value columns of a CSV file as one multivariate series (wide mode), or every item of a "
    "long CSV or Parquet file (one row per item and timestamp; selected by --id-column or --target). "
    "With --engine ray, long format runs on a Ray cluster and writes a folder of Parquet files."
)
PROGRESS_EVERY_S = 2.0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "forecast", help="forecast a wide CSV file, or the items of a long CSV or Parquet file",
        description=DESCRIPTION,
    )
    add = parser.add_argument
    add_model_argument(parser)
    add("--input", required=True, type=Path,
        help="wide: CSV with a header row; empty, NA, n/a, null, nan (and pandas' other missing-value "
             "spellings) are missing. long: .csv, .parquet or .pq (with --engine ray also a folder of Parquet files)")
    add("--columns", type=names, help="wide: comma-separated value columns (default: all but the timestamp column)")
    add("--timestamp-column",
        help="wide: column of ISO 8601 times or epoch seconds; long: the time column (default there: timestamp)")
    add("--id-column", help="long format: the item id column (default there: item_id)")
    add("--target", type=names, help="long format: comma-separated value column(s) to forecast (default: target)")
    add("--future", type=Path,
        help="long format: file (.csv, .parquet, .pq) of id, timestamp and the known future of exogenous columns")
    add("--prediction-length", required=True, type=_positive_int, help="steps to forecast")
    add_sampling_arguments(parser)
    add_block_size_argument(parser)
    add("--batch-size", type=_positive_int, help=f"long format: items forecast at once (default: {DEFAULT_BATCH_SIZE})")
    add("--quantiles", type=quantiles, default="0.1,0.5,0.9",
        help="levels in [0, 1]; strictly inside (0, 1) in long format; each names its output column, as "
             "predict_df names them (default: %(default)s)")
    add("--output", type=Path,
        help="output file: Parquet for a .parquet or .pq suffix (long format), else CSV (default: CSV on stdout); "
             "with --engine ray (required there): a new folder that receives Parquet files")
    add_device_argument(parser)
    add("--compile", action=argparse.BooleanOptionalAction, help="default: the TOTO_COMPILE variable decides")
    add_engine_arguments(parser, "forecast long format only; no --future")
    parser.set_defaults(run=run)


def _progress_printer() -> Callable[[int, int], None]:
    last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= PROGRESS_EVERY_S:
            last = now
            print(f"decoding: {done}/{total} patches", file=sys.stderr, flush=True)

    return report


def run(args: argparse.Namespace) -> int:
    """Read the input, forecast, write the output; user mistakes raise (``cli`` reports them)."""
    check_engine(args)
    if args.engine == "ray":
        forecast_ray(args)
    elif is_long(args):
        forecast_long(args)
    else:
        forecast(args)
    return 0


def is_long(args: argparse.Namespace) -> bool:
    """Long format: asked for by --id-column, --target or --future, and always for a Parquet input."""
    parquet = args.input.suffix.lower() in PARQUET_SUFFIXES
    return bool(args.id_column or args.target or args.future or parquet)


def forecast(args: argparse.Namespace) -> None:
    """Wide mode: the value columns of one CSV file are the variates of one series."""
    import numpy as np
    import torch

    if args.batch_size is not None:
        raise UsageError("--batch-size is for long format (--id-column, --target); a wide CSV is a single series")
    if args.output is not None and output_format(args.output) == "parquet":
        raise UsageError(f"--output {args.output}: wide mode writes CSV; Parquet is for long format (--id-column)")
    table = read_table(args.input, args.columns, args.timestamp_column)
    options, step_text = {}, "unknown (no --timestamp-column)"
    if table.timeline is not None:
        table.timeline.check_horizon(args.prediction_length)
        options["time_interval_seconds"] = max(1, round(table.timeline.seconds()))
        step_text = table.timeline.describe()
    if args.output is not None:
        check_output_path(args.output, "--output")
    check_device(args.device)
    check_model(args.model)
    rows, missing = table.values.shape[1], int(np.isnan(table.values).sum())
    columns = f"{len(table.columns)} columns ({', '.join(table.columns)})"
    print(f"input: {args.input}: {rows} rows x {columns}, {missing} missing, step {step_text}", file=sys.stderr)
    pipeline = load_pipeline(args)
    apply_block_size(args, pipeline)
    context = torch.from_numpy(table.values[None].astype(np.float32))  # (1 series, columns as variates, time)
    try:
        forecast = pipeline.predict(
            context, args.prediction_length, progress=_progress_printer(), **sampling_options(args, pipeline.family),
            **options,
        )[0]
    except ValueError as err:  # a forecast too large for memory, say (the input was checked on reading)
        raise forecast_error(err) from None
    future = None if table.timeline is None else table.timeline.future(args.prediction_length)
    if args.output is None:
        write_forecast(sys.stdout, table.columns, forecast, args.quantiles, future)
        return

    def write(temporary: Path) -> None:
        try:
            with open(temporary, "w", newline="", encoding="utf-8") as out:
                write_forecast(out, table.columns, forecast, args.quantiles, future)
        except OSError as err:
            raise UsageError(f"cannot write {args.output} ({err.strerror or err})") from None

    with staged_outputs() as outputs:
        outputs.write(args.output, write)


def forecast_long(args: argparse.Namespace) -> None:
    """Long mode: every item of a long CSV or Parquet file, through :meth:`TotoPipeline.predict_df`."""
    if args.columns is not None:
        raise UsageError("--columns is for wide CSV; in long format name the value columns with --target")
    levels = frame_levels(args.quantiles)
    if args.output is not None:
        check_output_path(args.output, "--output")
    check_device(args.device)
    check_model(args.model)
    long_input = read_long_input(args, future=args.future)
    print(long_input.describe(), file=sys.stderr)
    pipeline = load_pipeline(args)
    apply_block_size(args, pipeline)
    pd = pandas_module()
    started = time.perf_counter()
    try:
        frame = pipeline.predict_df(
            long_input.data.frame,
            None if long_input.future is None else long_input.future.frame,
            **frame_options(args, levels, pipeline.family),
        )
    except (OverflowError, pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta):
        raise horizon_error(args.prediction_length) from None  # the horizon's timestamps overflow
    except ValueError as err:  # CellError included
        raise forecast_error(err, long_input) from None
    items = frame[long_input.id_column].nunique()
    seconds = time.perf_counter() - started
    print(f"forecast {items} item{'s' * (items != 1)} x {args.prediction_length} steps in {seconds:.1f} s",
          file=sys.stderr)
    if args.output is None:
        frame.to_csv(sys.stdout, index=False)
        return
    with staged_outputs() as outputs:
        outputs.write(args.output, frame_writer(frame, args.output))


def forecast_ray(args: argparse.Namespace) -> None:
    """--engine ray: the cluster reads the long file (or Parquet folder) and model actors forecast every
    item; the output is a new folder of Parquet files. Nothing is read into memory here."""
    from ..engines.ray import forecast_dataset

    if args.future is not None:
        raise UsageError("--future is not supported with --engine ray; use --engine local")
    if args.columns is not None or not (is_long(args) or args.input.is_dir()):
        raise UsageError("--engine ray forecasts long format only (--id-column, --target); "
                         "a wide CSV runs with --engine local")
    levels = frame_levels(args.quantiles)
    if args.output is None:
        raise UsageError("--engine ray needs --output: a new folder for the Parquet files")
    check_output_folder(args.output, "--output")
    check_model(args.model)
    family, config = model_config(args.model)
    options = {**frame_options(args, levels, family), **block_size_options(args, family, config)}
    workers = connect_ray(args)
    started = time.perf_counter()
    with ray_errors(args):
        dataset = forecast_dataset(str(args.input.absolute()), **options, **workers)
        write_ray_folder(dataset, args.output)
    seconds = time.perf_counter() - started
    print(f"forecast {args.input}, {args.prediction_length} steps, in {seconds:.1f} s; wrote {args.output}",
          file=sys.stderr)
