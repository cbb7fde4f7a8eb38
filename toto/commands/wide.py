"""Wide CSV for ``toto-compiled forecast``: the value columns of one file are the variates of one series.

Read by :func:`toto.frames.io.read_data_file`, as long files are (the same cells are missing);
the step of the timestamps is found as long mode finds an item's
(:func:`toto.frames.panel.series_step`), and the forecast's timestamps continue it, written
like the input's (numbers, dates or date-times). Needs pandas (extra ``toto-compiled[pandas]``).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..frames.io import DataFile, DataFileError, check_columns, read_data_file
from ..frames.panel import PANDAS_EXTRA, quantile_column, require_pandas, series_step, steps_after
from .errors import UsageError
from .options import horizon_error

FLOAT32_MAX = float(np.finfo(np.float32).max)  # the model computes in float32
INT64_MAX = 2**63 - 1


def pandas_for_wide() -> Any:
    try:
        return require_pandas()
    except ImportError:
        raise UsageError(f"forecast reads CSV files with pandas: {PANDAS_EXTRA}") from None


@dataclass(frozen=True)
class Table:
    data: DataFile
    columns: list[str]  # value columns, in output order
    values: np.ndarray  # (n_columns, n_rows); NaN is missing
    timeline: Timeline | None


@dataclass(frozen=True)
class Timeline:
    """The timestamp column: parsed (a pandas Index of datetimes or numbers), its step, its cells as written."""

    stamps: Any
    step: Any  # a pandas offset, a Timedelta or a number
    cells: list[str]

    def seconds(self) -> float:
        """The step in seconds; for a calendar step (months, quarters), the median gap."""
        pd = require_pandas()
        if isinstance(self.step, pd.offsets.Tick):
            return self.step.nanos / 1e9
        if isinstance(self.step, pd.Timedelta):
            return self.step.total_seconds()
        if isinstance(self.step, pd.DateOffset):
            return float(np.median(np.diff(self.stamps.asi8))) / 1e9
        return float(self.step)

    def describe(self) -> str:
        pd = require_pandas()
        calendar = isinstance(self.step, pd.DateOffset) and not isinstance(self.step, pd.offsets.Tick)
        return self.step.freqstr if calendar else f"{self.seconds():g} s"

    def check_horizon(self, horizon: int) -> None:
        """The last forecast time must be representable (datetimes end in 2262)."""
        last = self.stamps[-1]
        try:
            if isinstance(last, (int, np.integer)) and abs(int(last) + int(self.step) * horizon) > INT64_MAX:
                raise OverflowError
            last + self.step * horizon
        except (OverflowError, ValueError):  # OutOfBoundsDatetime and OutOfBoundsTimedelta are ValueErrors
            raise horizon_error(horizon) from None

    def future(self, horizon: int) -> list[str]:
        """The ``horizon`` times after the last one, written like the input (numbers, dates or date-times)."""
        future = steps_after(self.stamps[-1], self.step, horizon)
        if not hasattr(future, "tz"):  # numbers
            return [str(int(t)) if float(t).is_integer() else repr(float(t)) for t in future]
        if all(len(cell.strip()) == 10 for cell in self.cells) and (future == future.normalize()).all():
            return [t.date().isoformat() for t in future]  # YYYY-MM-DD in, whole days out
        sep = " " if self.cells[-1].strip()[10:11] == " " else "T"
        return [t.isoformat(sep=sep) for t in future]


def read_table(path: Path, columns: list[str] | None, timestamp_column: str | None) -> Table:
    """Read the value columns as floats (NaN for missing) and the timestamp column as times."""
    pandas_for_wide()
    data = read_data_file(path, text_columns=[timestamp_column] if timestamp_column else [], fmt="csv",
                          keep_empty_rows=True)
    wanted = {name: "--columns" for name in columns or []}
    check_columns(data, {**wanted, **({timestamp_column: "--timestamp-column"} if timestamp_column else {})})
    if timestamp_column in wanted:
        raise DataFileError(f"{path}: column {timestamp_column!r} is the timestamp column, not a value column")
    columns = columns or [name for name in data.columns() if name != timestamp_column]
    if not columns:
        raise DataFileError(f"{path}: no value columns")
    hint = "" if timestamp_column else " (use --timestamp-column for a column of times)"
    values = np.stack([_values(data, name, hint) for name in columns])
    timeline = _timeline(data, timestamp_column) if timestamp_column else None
    return Table(data, columns, values, timeline)


def _values(data: DataFile, name: str, hint: str) -> np.ndarray:
    pd = require_pandas()
    column = data.frame[name]
    numbers = np.full(len(column), np.nan)
    if not pd.api.types.is_bool_dtype(column):  # True/False are not numbers
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(numbers) & column.notna().to_numpy()
    too_big = np.abs(numbers) > FLOAT32_MAX  # infinities included
    if (bad | too_big).any():
        k = int((bad | too_big).argmax())
        cell = column.iloc[k]
        what = f"is not a number{hint}" if bad[k] else "is not a finite float32 number"
        raise DataFileError(f"{data.where(column.index[k], name)}: {cell!r} {what}")
    if np.isnan(numbers).all():
        raise DataFileError(f"{data.path}: column {name!r} has no values, only missing cells")
    return numbers


def _timeline(data: DataFile, name: str) -> Timeline:
    """Epoch numbers, or ISO 8601 times; strictly increasing, two or more."""
    pd = require_pandas()
    column = data.frame[name]
    if column.isna().any():
        raise DataFileError(f"{data.where(column.index[int(column.isna().to_numpy().argmax())], name)}: "
                            "the timestamp is empty")
    text = column.str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all() and np.isfinite(numbers.to_numpy(dtype=np.float64)).all():
        stamps = pd.Index(numbers.to_numpy())
    else:
        stamps = pd.DatetimeIndex(_datetimes(pd, text, data, name))
    if len(stamps) < 2:
        raise DataFileError(f"{data.path}, column {name!r}: at least two rows are needed to find the time step")
    gaps = np.diff(stamps.asi8 if isinstance(stamps, pd.DatetimeIndex) else stamps.to_numpy())
    if (gaps <= 0).any():
        row = column.index[int((gaps <= 0).argmax()) + 1]
        raise DataFileError(f"{data.where(row, name)}: timestamps must be strictly increasing")
    return Timeline(stamps, series_step(stamps), list(column))


def _datetimes(pd: Any, text: Any, data: DataFile, name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mixed offsets: handled below
        parsed = pd.to_datetime(text, format="ISO8601", errors="coerce")
    if parsed.isna().any():
        k = int(parsed.isna().to_numpy().argmax())
        raise DataFileError(f"{data.where(text.index[k], name)}: {data.frame[name].iloc[k]!r} is neither an "
                            "ISO 8601 time nor a number")
    if not pd.api.types.is_datetime64_any_dtype(parsed):  # mixed time zones or offsets: object dtype
        if any(stamp.tzinfo is None for stamp in parsed):
            raise DataFileError(f"{data.path}, column {name!r}: some times have a time zone and some do not")
        parsed = pd.to_datetime(text, format="ISO8601", utc=True)  # offsets that change (summer time): UTC
    return parsed


def write_forecast(
    out: TextIO, names: list[str], forecast: Any, quantiles: list[tuple[str, float]], future: list[str] | None
) -> None:
    """One row per (column, step): series, step, [timestamp,] mean, then the quantiles (over
    samples, or between a quantile model's knots, where the mean is its median), named as
    :meth:`TotoPipeline.predict_df` names them (``0.1``)."""
    levels = [q for _, q in quantiles]
    if forecast.samples is None:
        stats = np.stack([forecast.mean[0], *forecast.quantile(levels)[:, 0]], axis=-1).astype(np.float64)
    else:
        paths = forecast.samples[0].astype(np.float64)  # (variates, horizon, samples)
        stats = np.stack([paths.mean(-1), *np.quantile(paths, levels, axis=-1)], axis=-1)
    writer = csv.writer(out, lineterminator="\n")
    levels = [quantile_column(q) for _, q in quantiles]
    writer.writerow(["series", "step", *(["timestamp"] if future else []), "mean", *levels])
    for name, rows in zip(names, stats):
        for h, row in enumerate(rows):
            # Samples are float32: write float32's shortest round-trip digits, not float64 noise.
            writer.writerow([name, h + 1, *([future[h]] if future else []), *(str(np.float32(x)) for x in row)])
