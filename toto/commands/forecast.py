"""``toto-compiled forecast``: forecast a wide CSV as one multivariate series, or every item of a long file.

Wide mode (``--columns``, the default): the value columns of a CSV file are the variates of
one series; writes long ("tidy") CSV: one row per (column, step) with the sample mean and
quantiles. Long mode (``--id-column`` and/or ``--target``; always for Parquet input): one row
per (item, timestamp) in CSV or Parquet, forecast by :meth:`TotoPipeline.predict_df`, whose
frame is written as CSV or Parquet. Every output file is written to a temporary file first
and moved into place whole.

With ``--engine ray`` (long mode only), the Ray cluster reads the input and model actors
forecast it (:func:`toto.engines.ray.forecast_dataset`); the output is a new folder of
Parquet files, renamed into place once complete (:mod:`.ray_engine` holds what the Ray
engine's commands share).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
import torch

from ..frames.panel import CellError
from ..checkpoints.reading import DEFAULT_MODEL_ID
from ..pipeline.pipeline import DEFAULT_FRAME_BATCH_SIZE, TotoPipeline
from .common import UsageError, _finite, _positive_int, add_device_argument, device_problem
from .ray_engine import (
    add_engine_arguments,
    check_engine,
    check_output_folder,
    connect_ray,
    ray_errors,
    write_ray_folder,
)
from ..frames.io import (
    PARQUET_SUFFIXES,
    DataFile,
    DataFileError,
    cell_error_message,
    check_columns,
    check_output_path,
    frame_writer,
    output_format,
    read_data_file,
    staged_outputs,
    value_error_message,
)

PROG = "toto-compiled forecast"
DESCRIPTION = (
    "Forecast the value columns of a CSV file as one multivariate series (wide mode), or every item of a "
    "long CSV or Parquet file (one row per item and timestamp; selected by --id-column or --target). "
    "With --engine ray, long format runs on a Ray cluster and writes a folder of Parquet files."
)
MISSING = frozenset({"", "nan", "na", "null"})  # compared lower-case
FLOAT32_MAX = float(np.finfo(np.float32).max)
PROGRESS_EVERY_S = 2.0


class CsvError(UsageError):
    """A bad input CSV; the message names the file and, where it applies, the line and column."""


@dataclass(frozen=True)
class Table:
    columns: list[str]  # value columns, in output order
    values: np.ndarray  # (n_columns, n_rows); NaN is missing
    lines: list[int]  # each row's line number in the file
    timestamps: list[str] | None  # raw cells of the timestamp column


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "forecast", help="forecast a wide CSV file, or the items of a long CSV or Parquet file",
        description=DESCRIPTION,
    )
    add = parser.add_argument
    add("--model", default=DEFAULT_MODEL_ID, help="hub id or local folder (default: %(default)s)")
    add("--input", required=True, type=Path,
        help="wide: CSV with a header row; empty, nan, NA and null cells are missing. long: .csv, .parquet or .pq "
             "(with --engine ray also a folder of Parquet files)")
    add("--columns", type=_names, help="wide: comma-separated value columns (default: all but the timestamp column)")
    add("--timestamp-column",
        help="wide: column of ISO 8601 times or epoch seconds; long: the time column (default there: timestamp)")
    add("--id-column", help="long format: the item id column (default there: item_id)")
    add("--target", type=_names, help="long format: comma-separated value column(s) to forecast (default: target)")
    add("--future", type=Path,
        help="long format: file (.csv, .parquet, .pq) of id, timestamp and the known future of exogenous columns")
    add("--prediction-length", required=True, type=_positive_int, help="steps to forecast")
    add("--num-samples", type=_positive_int, default=256, help="default: %(default)s")
    add("--samples-per-batch", type=_positive_int, default=256, help="default: %(default)s")
    add("--batch-size", type=_positive_int,
        help=f"long format: items forecast at once (default: {DEFAULT_FRAME_BATCH_SIZE})")
    add("--quantiles", type=_quantiles, default="0.1,0.5,0.9",
        help="levels in [0, 1]; strictly inside (0, 1) in long format (default: %(default)s)")
    add("--output", type=Path,
        help="output file: Parquet for a .parquet or .pq suffix (long format), else CSV (default: CSV on stdout); "
             "with --engine ray (required there): a new folder that receives Parquet files")
    add_device_argument(parser)
    add("--compile", action=argparse.BooleanOptionalAction, help="default: the TOTO_COMPILE variable decides")
    add("--seed", type=int, default=0, help="default: %(default)s")
    add_engine_arguments(parser, "forecast long format only; no --future")
    parser.set_defaults(run=run)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated names, got {text!r}")
    return names


def _quantiles(text: str) -> list[tuple[str, float]]:
    """``"0.1,0.5"`` -> ``[("0.1", 0.1), ("0.5", 0.5)]``; the text as given names the output column."""
    levels = [(part.strip(), _finite(part)) for part in text.split(",")]
    for part, level in levels:
        if level is None or not 0.0 <= level <= 1.0:
            raise argparse.ArgumentTypeError(f"each level must be a number in [0, 1], got {part!r}")
    if len({level for _, level in levels}) != len(levels):
        raise argparse.ArgumentTypeError(f"levels must be distinct, got {text!r}")
    return levels


def read_table(path: Path, columns: list[str] | None, timestamp_column: str | None) -> Table:
    """Read the value columns as floats (NaN for missing) and the timestamp column as text."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = [name.strip() for name in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if row]  # blank lines are skipped but still counted
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CsvError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    if not header:
        raise CsvError(f"{path}: the file is empty; a header row is required")
    if len(set(header)) != len(header):
        raise CsvError(f"{path}: the header repeats a column name: {', '.join(header)}")
    for name in (columns or []) + ([timestamp_column] if timestamp_column else []):
        if name not in header:
            raise CsvError(f"{path}: no column {name!r}; the columns are: {', '.join(header)}")
    if timestamp_column in (columns or []):
        raise CsvError(f"{path}: column {timestamp_column!r} is the timestamp column, not a value column")
    columns = columns or [name for name in header if name != timestamp_column]
    if not columns or not rows:
        raise CsvError(f"{path}: no {'value columns' if not columns else 'data rows after the header'}")
    hint = "" if timestamp_column else " (use --timestamp-column for a column of times)"
    indices = [header.index(name) for name in columns]
    values = np.empty((len(columns), len(rows)))
    for j, (line, row) in enumerate(rows):
        if len(row) != len(header):
            raise CsvError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}")
        for i, (name, k) in enumerate(zip(columns, indices)):
            values[i, j] = _value(row[k], f"{path}, line {line}, column {name!r}", hint)
    for name, series in zip(columns, values):
        if np.isnan(series).all():
            raise CsvError(f"{path}: column {name!r} has no values, only missing cells")
    stamps = [row[header.index(timestamp_column)] for _, row in rows] if timestamp_column else None
    return Table(columns, values, [line for line, _ in rows], stamps)


def _value(cell: str, where: str, hint: str) -> float:
    text = cell.strip()
    if text.lower() in MISSING:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise CsvError(f"{where}: {cell!r} is not a number{hint}") from None
    if math.isnan(value):  # other spellings float() accepts, such as "-nan"
        return math.nan
    if abs(value) > FLOAT32_MAX:  # the model computes in float32
        raise CsvError(f"{where}: {cell!r} is not a finite float32 number")
    return value


def parse_timestamps(cells: list[str], lines: list[int], where: str) -> tuple[list, float]:
    """Cells -> (epoch seconds or datetimes, median step in seconds). They must strictly increase."""
    numbers = [_finite(cell) for cell in cells]
    points: list = numbers
    if any(n is None for n in numbers):
        points = []
        for cell, line in zip(cells, lines):
            try:
                points.append(datetime.fromisoformat(cell.strip()))
            except ValueError:
                raise CsvError(f"{where}, line {line}: {cell!r} is neither an ISO 8601 time nor a number") from None
        if len({p.tzinfo is None for p in points}) > 1:
            raise CsvError(f"{where}: some times have a time zone and some do not")
    gaps = [b - a for a, b in zip(points, points[1:])]
    gaps = [g.total_seconds() if isinstance(g, timedelta) else g for g in gaps]
    for gap, line in zip(gaps, lines[1:]):
        if gap <= 0:
            raise CsvError(f"{where}, line {line}: timestamps must be strictly increasing")
    if not gaps:
        raise CsvError(f"{where}: at least two rows are needed to find the time step")
    return points, statistics.median(gaps)


def future_timestamps(points: list, step: float, horizon: int, cells: list[str]) -> list[str]:
    """The ``horizon`` times after the last one, written like the input (numbers, dates or date-times)."""
    last = points[-1]
    if not isinstance(last, datetime):
        future = [last + k * step for k in range(1, horizon + 1)]
        return [str(int(t)) if t.is_integer() else repr(t) for t in future]
    future = [last + k * timedelta(seconds=step) for k in range(1, horizon + 1)]
    if step % 86400 == 0 and all(len(cell.strip()) == 10 for cell in cells):  # YYYY-MM-DD in, daily step
        return [t.date().isoformat() for t in future]
    return [t.isoformat(sep=" " if cells[-1].strip()[10:11] == " " else "T") for t in future]


def write_forecast(
    out: TextIO, names: list[str], samples: np.ndarray, quantiles: list[tuple[str, float]], future: list[str] | None
) -> None:
    """One row per (column, step): series, step, [timestamp,] mean, then the quantiles over samples."""
    paths = samples[0].astype(np.float64)  # (variates, horizon, samples)
    stats = np.stack([paths.mean(-1), *np.quantile(paths, [q for _, q in quantiles], axis=-1)], axis=-1)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["series", "step", *(["timestamp"] if future else []), "mean", *(f"q{t}" for t, _ in quantiles)])
    for name, rows in zip(names, stats):
        for h, row in enumerate(rows):
            # Samples are float32: write float32's shortest round-trip digits, not float64 noise.
            writer.writerow([name, h + 1, *([future[h]] if future else []), *(str(np.float32(x)) for x in row)])


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
    """Read the input, forecast, write the output. A user mistake prints one error line and returns 2."""
    try:
        check_engine(args)
        if args.engine == "ray":
            forecast_ray(args)
        elif is_long(args):
            forecast_long(args)
        else:
            forecast(args)
    except (UsageError, DataFileError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


def is_long(args: argparse.Namespace) -> bool:
    """Long format: asked for by --id-column, --target or --future, and always for a Parquet input."""
    parquet = args.input.suffix.lower() in PARQUET_SUFFIXES
    return bool(args.id_column or args.target or args.future or parquet)


def load_pipeline(args: argparse.Namespace) -> TotoPipeline:
    """The model named by --model on --device, compiled as --compile says; a failure is a UsageError."""
    compiling = {None: "TOTO_COMPILE decides", True: "on", False: "off"}[args.compile]
    print(f"loading model {args.model} on {args.device} (compile: {compiling})", file=sys.stderr, flush=True)
    try:
        return TotoPipeline.from_pretrained(args.model, device_map=args.device, torch_compile=args.compile)
    except (OSError, ValueError) as err:  # no such folder, hub failure, bad config or weights
        raise UsageError(f"cannot load model {args.model!r}: {err}") from None


def frame_levels(quantiles: list[tuple[str, float]]) -> list[float]:
    """--quantiles for a data frame: each level strictly between 0 and 1."""
    for text, level in quantiles:
        if not 0.0 < level < 1.0:
            raise UsageError(f"--quantiles: in long format each level must be strictly between 0 and 1, got {text!r}")
    return [level for _, level in quantiles]


def forecast(args: argparse.Namespace) -> None:
    """Wide mode: the value columns of one CSV file are the variates of one series."""
    if args.batch_size is not None:
        raise UsageError("--batch-size is for long format (--id-column, --target); a wide CSV is a single series")
    if args.output is not None and output_format(args.output) == "parquet":
        raise UsageError(f"--output {args.output}: wide mode writes CSV; Parquet is for long format (--id-column)")
    table = read_table(args.input, args.columns, args.timestamp_column)
    options, future, step_text = {}, None, "unknown (no --timestamp-column)"
    if table.timestamps is not None:
        where = f"{args.input}, column {args.timestamp_column!r}"
        points, step = parse_timestamps(table.timestamps, table.lines, where)
        future = future_timestamps(points, step, args.prediction_length, table.timestamps)
        options["time_interval_seconds"] = max(1, round(step))
        step_text = f"{step:g} s"
    if args.output is not None and (args.output.is_dir() or not args.output.resolve().parent.is_dir()):
        raise UsageError(f"--output {args.output}: not a file path in an existing folder")
    if problem := device_problem(args.device):
        raise UsageError(problem)
    rows, missing = table.values.shape[1], int(np.isnan(table.values).sum())
    columns = f"{len(table.columns)} columns ({', '.join(table.columns)})"
    print(f"input: {args.input}: {rows} rows x {columns}, {missing} missing, step {step_text}", file=sys.stderr)
    pipeline = load_pipeline(args)
    context = torch.from_numpy(table.values[None].astype(np.float32))  # (1 series, columns as variates, time)
    samples = pipeline.predict(
        context, args.prediction_length, num_samples=args.num_samples, samples_per_batch=args.samples_per_batch,
        seed=args.seed, progress=_progress_printer(), **options,
    )[0].samples
    if args.output is None:
        write_forecast(sys.stdout, table.columns, samples, args.quantiles, future)
        return

    def write(temporary: Path) -> None:
        try:
            with open(temporary, "w", newline="", encoding="utf-8") as out:
                write_forecast(out, table.columns, samples, args.quantiles, future)
        except OSError as err:
            raise UsageError(f"cannot write {args.output} ({err.strerror or err})") from None

    with staged_outputs() as outputs:
        outputs.write(args.output, write)


@dataclass(frozen=True)
class LongInput:
    """The columns of a long-format input, and its files as read."""

    id_column: str
    timestamp_column: str
    targets: list[str]
    data: DataFile
    future: DataFile | None

    def files(self) -> dict[str, DataFile]:
        """By the frame names that :mod:`toto.frames` errors use."""
        return {"df": self.data, **({"future_df": self.future} if self.future is not None else {})}

    def error(self, err: ValueError) -> DataFileError:
        """A frame's ValueError as an error naming the file, and for a bad cell its line (or row) and column."""
        if isinstance(err, CellError):
            return DataFileError(cell_error_message(err, self.files(), self.id_column, self.timestamp_column))
        return DataFileError(value_error_message(err, self.files()))

    def describe(self) -> str:
        frame = self.data.frame
        items = frame[self.id_column].nunique()
        text = (
            f"input: {self.data.path}: {len(frame)} rows, {items} item{'s' * (items != 1)}, "
            f"target {', '.join(self.targets)}"
        )
        if self.future is not None:
            exogenous = [c for c in self.future.columns() if c not in (self.id_column, self.timestamp_column)]
            text += f"; known future of {', '.join(exogenous) or '(no columns)'} from {self.future.path}"
        return text


def long_columns(args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """The id column, the timestamp column and the targets of a long-format input (defaults applied)."""
    id_column = args.id_column or "item_id"
    timestamp_column = args.timestamp_column or "timestamp"
    targets = args.target or ["target"]
    if len({id_column, timestamp_column}) != 2 or {id_column, timestamp_column} & set(targets):
        raise UsageError(
            f"--id-column {id_column!r}, --timestamp-column {timestamp_column!r} and --target "
            f"{','.join(targets)!r} must name different columns"
        )
    return id_column, timestamp_column, targets


def frame_options(args: argparse.Namespace, levels: list[float]) -> dict:
    """The keyword arguments that the long-format paths (``predict_df``, backtests, either engine) share."""
    id_column, timestamp_column, targets = long_columns(args)
    return dict(
        id_column=id_column,
        timestamp_column=timestamp_column,
        target=targets,
        prediction_length=args.prediction_length,
        quantile_levels=levels,
        num_samples=args.num_samples,
        samples_per_batch=args.samples_per_batch,
        batch_size=args.batch_size or DEFAULT_FRAME_BATCH_SIZE,
        seed=args.seed,
    )


def read_long_input(args: argparse.Namespace, *, future: Path | None = None) -> LongInput:
    """Read --input (and ``future``) as long-format files and check that the named columns exist."""
    id_column, timestamp_column, targets = long_columns(args)
    keys = {id_column: "--id-column", timestamp_column: "--timestamp-column"}
    data = read_data_file(args.input, text_columns=[id_column])
    check_columns(data, {**keys, **{name: "--target" for name in targets}})
    future_data = None
    if future is not None:
        future_data = read_data_file(future, text_columns=[id_column])
        check_columns(future_data, keys)
    return LongInput(id_column, timestamp_column, targets, data, future_data)


def forecast_long(args: argparse.Namespace) -> None:
    """Long mode: every item of a long CSV or Parquet file, through :meth:`TotoPipeline.predict_df`."""
    if args.columns is not None:
        raise UsageError("--columns is for wide CSV; in long format name the value columns with --target")
    levels = frame_levels(args.quantiles)
    if args.output is not None:
        check_output_path(args.output, "--output")
    if problem := device_problem(args.device):
        raise UsageError(problem)
    long_input = read_long_input(args, future=args.future)
    print(long_input.describe(), file=sys.stderr)
    pipeline = load_pipeline(args)
    started = time.perf_counter()
    try:
        frame = pipeline.predict_df(
            long_input.data.frame,
            None if long_input.future is None else long_input.future.frame,
            **frame_options(args, levels),
        )
    except ValueError as err:  # CellError included
        raise long_input.error(err) from None
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
    options = frame_options(args, levels)
    workers = connect_ray(args)
    started = time.perf_counter()
    with ray_errors(args):
        dataset = forecast_dataset(str(args.input.absolute()), **options, **workers)
        write_ray_folder(dataset, args.output)
    seconds = time.perf_counter() - started
    print(f"forecast {args.input}, {args.prediction_length} steps, in {seconds:.1f} s; wrote {args.output}",
          file=sys.stderr)


