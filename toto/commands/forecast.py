"""``toto-compiled forecast``: forecast the value columns of a CSV file as one multivariate series.

Writes long ("tidy") CSV: one row per (column, step) with the sample mean and quantiles.
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

from ..loading import DEFAULT_MODEL_ID
from ..pipeline import TotoPipeline
from .common import add_device_argument, device_problem

PROG = "toto-compiled forecast"
DESCRIPTION = "Forecast the value columns of a CSV file as one multivariate series; write mean and quantiles as CSV."
MISSING = frozenset({"", "nan", "na", "null"})  # compared lower-case
FLOAT32_MAX = float(np.finfo(np.float32).max)
PROGRESS_EVERY_S = 2.0


class UsageError(Exception):
    """A user mistake: one error line on stderr, exit code 2."""


class CsvError(UsageError):
    """A bad input CSV; the message names the file and, where it applies, the line and column."""


@dataclass(frozen=True)
class Table:
    columns: list[str]  # value columns, in output order
    values: np.ndarray  # (n_columns, n_rows); NaN is missing
    lines: list[int]  # each row's line number in the file
    timestamps: list[str] | None  # raw cells of the timestamp column


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("forecast", help="forecast the columns of a CSV file", description=DESCRIPTION)
    add = parser.add_argument
    add("--model", default=DEFAULT_MODEL_ID, help="hub id or local folder (default: %(default)s)")
    add("--input", required=True, type=Path, help="CSV with a header row; empty, nan, NA and null cells are missing")
    add("--columns", type=_names, help="comma-separated value columns (default: all but the timestamp column)")
    add("--timestamp-column", help="column of ISO 8601 times or epoch seconds")
    add("--prediction-length", required=True, type=_positive_int, help="steps to forecast")
    add("--num-samples", type=_positive_int, default=256, help="default: %(default)s")
    add("--samples-per-batch", type=_positive_int, default=256, help="default: %(default)s")
    add("--quantiles", type=_quantiles, default="0.1,0.5,0.9", help="levels in [0, 1] (default: %(default)s)")
    add("--output", type=Path, help="output CSV (default: stdout)")
    add_device_argument(parser)
    add("--compile", action=argparse.BooleanOptionalAction, help="default: the TOTO_COMPILE variable decides")
    add("--seed", type=int, default=0, help="default: %(default)s")
    parser.set_defaults(run=run)


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


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


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


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
    """Read the CSV, forecast, write the CSV. A user mistake prints one error line and returns 2."""
    try:
        forecast(args)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


def forecast(args: argparse.Namespace) -> None:
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
    compiling = {None: "TOTO_COMPILE decides", True: "on", False: "off"}[args.compile]
    print(f"loading model {args.model} on {args.device} (compile: {compiling})", file=sys.stderr, flush=True)
    try:
        pipeline = TotoPipeline.from_pretrained(args.model, device_map=args.device, torch_compile=args.compile)
    except (OSError, ValueError) as err:  # no such folder, hub failure, bad config or weights
        raise UsageError(f"cannot load model {args.model!r}: {err}") from None
    context = torch.from_numpy(table.values[None].astype(np.float32))  # (1 series, columns as variates, time)
    samples = pipeline.predict(
        context, args.prediction_length, num_samples=args.num_samples, samples_per_batch=args.samples_per_batch,
        seed=args.seed, progress=_progress_printer(), **options,
    )[0].samples
    if args.output is None:
        write_forecast(sys.stdout, table.columns, samples, args.quantiles, future)
        return
    with open(args.output, "w", newline="", encoding="utf-8") as out:
        write_forecast(out, table.columns, samples, args.quantiles, future)
