"""Long-format data frames in and out of :meth:`TotoPipeline.predict_df` (extra ``toto-compiled[pandas]``).

:func:`read_panel` turns a long frame (one row per item and timestamp) into one
regular grid per item: its step is inferred (``pandas.infer_freq``, else the median
gap), missing rows become NaN (missing values), and the horizon's timestamps continue
the grid. :func:`forecast_frame` turns per-item forecast summaries back into a long frame.
Nothing in the core imports this module; pandas is imported on first use.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

PANDAS_EXTRA = 'pip install "toto-compiled[pandas]"'


def require_pandas() -> Any:
    """The pandas module, or an ``ImportError`` naming the extra that installs it."""
    try:
        import pandas
    except ImportError as err:
        raise ImportError(f"data-frame input needs pandas: {PANDAS_EXTRA}") from err
    return pandas


class CellError(ValueError):
    """A bad cell; ``row`` is the frame's index label, so a caller that read a file can name its line."""

    def __init__(self, message: str, *, frame: str, column: str, row: Any):
        super().__init__(message)
        self.frame, self.column, self.row = frame, column, row


@dataclass(frozen=True)
class Item:
    """One item's context on its regular grid, and its horizon."""

    item_id: Any
    timestamps: Any  # pandas Index: the context grid, oldest first
    values: np.ndarray  # (targets + exogenous, time), float64, NaN = missing
    step: Any  # a pandas offset, a Timedelta or a number: the grid's spacing
    future_timestamps: Any  # pandas Index of prediction_length steps after the context
    future_exogenous: np.ndarray | None  # (exogenous, prediction_length)


@dataclass(frozen=True)
class Panel:
    """Every item of a long frame, in the order of first appearance."""

    id_column: str
    timestamp_column: str
    targets: tuple[str, ...]
    exogenous: tuple[str, ...]
    items: list[Item]

    def context(self) -> np.ndarray:
        """``(items, variates, longest)``, left-padded with NaN; exogenous variates last."""
        longest = max(item.values.shape[1] for item in self.items)
        padded = np.full((len(self.items), self.items[0].values.shape[0], longest), np.nan)
        for row, item in zip(padded, self.items):
            row[:, longest - item.values.shape[1] :] = item.values
        return padded

    def future_exogenous(self) -> np.ndarray | None:
        """``(items, exogenous, prediction_length)``, or None without exogenous columns or their known future."""
        if not self.exogenous or self.items[0].future_exogenous is None:  # none, or no known future
            return None
        return np.stack([item.future_exogenous for item in self.items])


def target_names(target: str | Sequence[str]) -> tuple[str, ...]:
    """``target`` as a non-empty tuple of distinct column names."""
    names = (target,) if isinstance(target, str) else tuple(target)
    if not names or not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ValueError(f"target must be a column name or a non-empty list of distinct names, got {target!r}")
    return names


def read_panel(
    df: Any,
    future_df: Any = None,
    *,
    id_column: str,
    timestamp_column: str,
    target: str | Sequence[str],
    prediction_length: int,
    exogenous: Sequence[str] = (),
) -> Panel:
    """Validate a long frame (and the known future of its exogenous columns) and cut it per item.

    Exogenous columns are those of ``future_df`` besides the id and timestamp; each must
    also be a column of ``df``. Without a ``future_df``, ``exogenous`` names columns of
    ``df`` read as exogenous variates whose future is unknown (for training, say): they
    follow the targets in each item's values and its ``future_exogenous`` is None. With a
    ``future_df``, ``exogenous`` may be given too, naming the same columns, in the order
    wanted. Other columns of ``df`` are ignored.
    """
    require_pandas()  # the missing extra is the first thing to say
    targets = target_names(target)
    keys = (id_column, timestamp_column)
    if len(set(keys)) != 2 or set(keys) & set(targets):
        raise ValueError(f"id_column, timestamp_column and target must name different columns, got {keys} and {targets}")
    named = _exogenous_names(exogenous, keys, targets)
    _check_frame(df, "df", [*keys, *targets, *named])
    columns = named
    if future_df is not None:
        _check_frame(future_df, "future_df", list(keys))
        columns = tuple(c for c in future_df.columns if c not in keys)
        _check_exogenous_columns(columns, targets, df)
        if named and set(named) != set(columns):
            raise ValueError(
                f"exogenous {list(named)} must name the same columns as future_df has besides the id and "
                f"timestamp columns: {list(columns)}"
            )
        columns = named or columns
    values = [*targets, *columns]
    frame = df[[*keys, *values]].copy()
    frame[timestamp_column] = _timestamps(frame[timestamp_column], "df", timestamp_column)
    for name in values:
        frame[name] = _numeric(frame, name, "df", id_column)
    _check_unique(frame, id_column, timestamp_column, "df")
    groups = {item_id: group for item_id, group in frame.groupby(id_column, sort=False)}
    grids = _item_grids(groups, timestamp_column)
    futures = None
    if future_df is not None:
        futures = _future_values(future_df, columns, id_column, timestamp_column)
    items = []
    for item_id, group in groups.items():
        step, grid = grids[item_id]
        on_grid = group.set_index(timestamp_column)[list(values)].reindex(grid)
        item_values = on_grid.to_numpy(dtype=np.float64).T
        for name, row in zip(values, item_values):
            if np.isnan(row).all():
                raise ValueError(f"df: item {item_id!r} has no observed value in column {name!r}")
        future_timestamps = _continue(grid, step, prediction_length)
        future_exogenous = None
        if futures is not None:
            future_exogenous = _aligned_future(futures, item_id, future_timestamps, columns, timestamp_column)
        items.append(Item(item_id, grid, item_values, step, future_timestamps, future_exogenous))
    if futures is not None:
        extra = [item_id for item_id in futures if item_id not in groups]
        if extra:
            raise ValueError(f"future_df: item {extra[0]!r} is not in df ({len(extra)} such item(s))")
    return Panel(id_column, timestamp_column, targets, columns, items)


def forecast_frame(panel: Panel, summaries: np.ndarray, quantile_levels: Sequence[float]) -> Any:
    """The long forecast frame from ``summaries`` ``(items, targets, prediction_length, levels + 2)``.

    The last axis holds the quantiles at ``quantile_levels``, then the median, then the mean.
    Columns: id, timestamp, ``target_name``, ``predictions`` (the median), ``mean``, one per level.
    """
    pd = require_pandas()
    items, targets, horizon, _ = summaries.shape
    flat = summaries.reshape(items * targets * horizon, -1)
    # Index operations, not Python lists of Timestamps: they keep dtypes (a time zone, integer ids) and stay fast.
    horizons = [item.future_timestamps for item in panel.items for _ in range(targets)]
    columns = {
        panel.id_column: pd.Index([item.item_id for item in panel.items]).repeat(targets * horizon),
        panel.timestamp_column: horizons[0].append(horizons[1:]),
        "target_name": np.tile(np.repeat(np.array(panel.targets, dtype=object), horizon), items),
        "predictions": flat[:, -2],
        "mean": flat[:, -1],
    }
    for index, level in enumerate(quantile_levels):
        columns[quantile_column(level)] = flat[:, index]
    return pd.DataFrame(columns)


def quantile_column(level: float) -> str:
    """The column name of a quantile level, as Chronos names it: ``0.1`` -> ``"0.1"``."""
    return str(float(level))


def check_quantile_levels(levels: Sequence[float]) -> list[float]:
    """``levels`` as distinct floats strictly between 0 and 1."""
    try:
        values = [float(q) for q in levels]
    except (TypeError, ValueError):
        raise ValueError(f"quantile_levels must be numbers strictly between 0 and 1, got {levels!r}") from None
    if not values or any(not 0.0 < q < 1.0 for q in values) or len(set(values)) != len(values):
        raise ValueError(f"quantile_levels must be distinct numbers strictly between 0 and 1, got {levels!r}")
    return values


def _check_frame(frame: Any, name: str, columns: list[str]) -> None:
    pd = require_pandas()
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} has no column(s) {missing}; its columns are {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError(f"{name} has no rows")
    unnamed = frame[columns[0]].isna()
    if unnamed.any():
        row = frame.index[unnamed.to_numpy().argmax()]
        raise CellError(f"{name}: column {columns[0]!r} is empty in row {row!r}", frame=name, column=columns[0], row=row)


def _exogenous_names(exogenous: str | Sequence[str], keys: tuple[str, str], targets: tuple[str, ...]) -> tuple[str, ...]:
    """``exogenous`` as a tuple of distinct column names, none of them a key or a target."""
    names = (exogenous,) if isinstance(exogenous, str) else tuple(exogenous)
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ValueError(f"exogenous must be a column name or a list of distinct names, got {exogenous!r}")
    clash = [name for name in names if name in keys or name in targets]
    if clash:
        raise ValueError(
            f"exogenous column(s) {clash} are also the id, timestamp or target columns; an exogenous column "
            "must be another column"
        )
    return names


def _check_exogenous_columns(exogenous: tuple[str, ...], targets: tuple[str, ...], df: Any) -> None:
    if not exogenous:
        raise ValueError("future_df has no exogenous columns besides the id and timestamp columns")
    overlap = [c for c in exogenous if c in targets]
    if overlap:
        raise ValueError(f"future_df must not hold target column(s) {overlap}: they are what is forecast")
    missing = [c for c in exogenous if c not in df.columns]
    if missing:
        raise ValueError(
            f"future_df column(s) {missing} are not in df: an exogenous column needs its past in df too"
        )


def _timestamps(column: Any, frame_name: str, name: str) -> Any:
    """Datetimes or numbers; strings are parsed as datetimes. A cell that is neither is an error naming its row."""
    pd = require_pandas()
    column = numpy_backed(column)  # infer_freq and date_range do not read Arrow-backed datetimes
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if pd.api.types.is_datetime64_any_dtype(column) or numeric:
        parsed = column
    else:
        try:
            parsed = pd.to_datetime(column, errors="coerce")
        except (ValueError, TypeError) as err:  # e.g. mixed time zones
            raise ValueError(f"{frame_name}: timestamp column {name!r} cannot be read as datetimes: {err}") from None
    missing = parsed.isna()
    if missing.any():
        position = missing.to_numpy().argmax()
        row, value = column.index[position], column.iloc[position]
        what = "empty" if pd.isna(value) else f"not a timestamp ({value!r})"
        raise CellError(f"{frame_name}: timestamp column {name!r} is {what} in row {row!r}", frame=frame_name, column=name, row=row)
    return parsed


def numpy_backed(column: Any) -> Any:
    """``column`` on numpy dtypes if it is Arrow-backed (Ray Data, pandas' pyarrow backend), else itself.

    Datetimes keep their time zone; other columns take numpy's dtype for their values.
    """
    pd = require_pandas()
    if not isinstance(column.dtype, pd.ArrowDtype):
        return column
    values = pd.DatetimeIndex(column) if column.dtype.kind == "M" else column.to_numpy()
    return pd.Series(values, index=column.index, name=column.name)


def _numeric(frame: Any, name: str, frame_name: str, id_column: str) -> Any:
    """Column ``name`` as float64; the first non-numeric or infinite cell is an error naming its row and item."""
    pd = require_pandas()
    column = frame[name]
    if pd.api.types.is_bool_dtype(column):
        raise ValueError(f"{frame_name}: column {name!r} is boolean, not numeric")
    numbers = pd.to_numeric(column, errors="coerce").astype(np.float64)
    bad = numbers.isna() & column.notna()
    if bad.any():
        row = bad.to_numpy().argmax()
        raise CellError(
            f"{frame_name}: column {name!r} is not numeric: row {frame.index[row]!r} "
            f"(item {frame[id_column].iloc[row]!r}) holds {column.iloc[row]!r}",
            frame=frame_name, column=name, row=frame.index[row],
        )
    infinite = np.isinf(numbers.to_numpy())
    if infinite.any():
        row = infinite.argmax()
        raise CellError(
            f"{frame_name}: column {name!r} has ±inf in row {frame.index[row]!r} "
            f"(item {frame[id_column].iloc[row]!r}); use NaN for a missing value",
            frame=frame_name, column=name, row=frame.index[row],
        )
    return numbers


def _check_unique(frame: Any, id_column: str, timestamp_column: str, frame_name: str) -> None:
    duplicated = frame.duplicated([id_column, timestamp_column])
    if duplicated.any():
        row = frame[duplicated.to_numpy()].iloc[0]
        raise ValueError(
            f"{frame_name}: duplicate rows for item {row[id_column]!r} at {timestamp_column} "
            f"{row[timestamp_column]}; each (item, timestamp) must appear once"
        )


def _item_grids(groups: dict, timestamp_column: str) -> dict:
    """Each item's step and regular grid: its inferred frequency, else the panel's most common
    one if its timestamps lie on it, else its median gap; off every grid is an error naming it."""
    pd = require_pandas()
    stamps = {item_id: pd.Index(group[timestamp_column]).sort_values() for item_id, group in groups.items()}
    inferred = {item_id: _infer_step(item_stamps) for item_id, item_stamps in stamps.items()}
    common = Counter(step for step in inferred.values() if step is not None).most_common(1)
    grids = {}
    for item_id, item_stamps in stamps.items():
        step = inferred[item_id]
        grid = None if step is None else _grid_of(item_stamps, step)
        if grid is None and common:
            step = common[0][0]
            grid = _grid_of(item_stamps, step)
        if grid is None:
            step = _median_gap(item_stamps, item_id)
            grid = _grid_of(item_stamps, step)
        if grid is None:
            grid_between = _grid_between(item_stamps[0], item_stamps[-1], step)
            off = item_stamps[0] if grid_between is None else item_stamps[~item_stamps.isin(grid_between)][0]
            raise ValueError(
                f"df: item {item_id!r} has timestamps off a regular grid of step {step!r} (e.g. {off!r}); "
                "resample it to one frequency"
            )
        grids[item_id] = (step, grid)
    return grids


def _infer_step(stamps: Any) -> Any:
    """``pandas.infer_freq`` as an offset for datetimes; the constant gap for numbers; else None."""
    pd = require_pandas()
    if len(stamps) < 3:
        return None
    if isinstance(stamps, pd.DatetimeIndex):
        freq = pd.infer_freq(stamps)
        return None if freq is None else pd.tseries.frequencies.to_offset(freq)
    gaps = np.diff(stamps.to_numpy())
    return gaps[0].item() if (gaps == gaps[0]).all() else None


def _median_gap(stamps: Any, item_id: Any) -> Any:
    pd = require_pandas()
    if len(stamps) < 2:
        raise ValueError(
            f"df: item {item_id!r} has a single timestamp and no other item has an inferable frequency; "
            "give it more rows"
        )
    gaps = np.diff(stamps.to_numpy())
    median = np.median(gaps.astype(np.int64) if isinstance(stamps, pd.DatetimeIndex) else gaps)
    return pd.Timedelta(int(median)) if isinstance(stamps, pd.DatetimeIndex) else median.item()


def _steps_from(start: Any, step: Any, count: int) -> Any:
    """``count`` timestamps from ``start`` on, ``step`` apart (an offset, a Timedelta or a number)."""
    pd = require_pandas()
    if isinstance(start, pd.Timestamp):
        return pd.date_range(start=start, periods=count, freq=step)
    return pd.Index(start + step * np.arange(count))


def _grid_of(stamps: Any, step: Any) -> Any:
    """The grid of ``step`` from the first to the last of ``stamps`` (sorted), or None when one is off it."""
    grid = _grid_between(stamps[0], stamps[-1], step)
    return grid if grid is not None and stamps.isin(grid).all() else None


def _grid_between(first: Any, last: Any, step: Any) -> Any:
    """The grid from ``first`` to ``last``, or None when ``last`` is not on it."""
    pd = require_pandas()
    if isinstance(first, pd.Timestamp):
        grid = pd.date_range(start=first, end=last, freq=step)
    else:
        count = (last - first) / step
        if count != int(count):
            return None
        grid = _steps_from(first, step, int(count) + 1)
    return grid if len(grid) and grid[-1] == last else None


def _continue(grid: Any, step: Any, count: int) -> Any:
    return _steps_from(grid[-1], step, count + 1)[1:]


def series_step(stamps: Any) -> Any:
    """The step of one series' increasing timestamps (a pandas Index, two or more), found as
    :func:`read_panel` finds an item's: ``pandas.infer_freq`` (numbers: a constant gap), else the median gap."""
    step = _infer_step(stamps)
    return _median_gap(stamps, None) if step is None else step


def steps_after(last: Any, step: Any, count: int) -> Any:
    """The ``count`` timestamps after ``last``, ``step`` apart (an offset, a Timedelta or a number)."""
    return _continue([last], step, count)


def _future_values(future_df: Any, exogenous: tuple[str, ...], id_column: str, timestamp_column: str) -> dict:
    """Each item's validated known future, indexed by timestamp."""
    frame = future_df[[id_column, timestamp_column, *exogenous]].copy()
    frame[timestamp_column] = _timestamps(frame[timestamp_column], "future_df", timestamp_column)
    for name in exogenous:
        frame[name] = _numeric(frame, name, "future_df", id_column)
        missing = frame[name].isna()
        if missing.any():
            row = missing.to_numpy().argmax()
            raise CellError(
                f"future_df: column {name!r} is missing in row {frame.index[row]!r} "
                f"(item {frame[id_column].iloc[row]!r}); known future values must be known",
                frame="future_df", column=name, row=frame.index[row],
            )
    _check_unique(frame, id_column, timestamp_column, "future_df")
    return {item_id: group.set_index(timestamp_column) for item_id, group in frame.groupby(id_column, sort=False)}


def _aligned_future(futures: dict, item_id: Any, expected: Any, exogenous: tuple[str, ...], timestamp_column: str) -> np.ndarray:
    if item_id not in futures:
        raise ValueError(f"future_df has no rows for item {item_id!r}; it needs its {len(expected)} future steps")
    given = futures[item_id]
    if len(given) != len(expected) or not given.index.isin(expected).all():
        raise ValueError(
            f"future_df: item {item_id!r} must have exactly the {len(expected)} {timestamp_column} values "
            f"{expected[0]!r} to {expected[-1]!r} that follow its history; it has {len(given)} from "
            f"{given.index.min()!r} to {given.index.max()!r}"
        )
    return given.reindex(expected)[list(exogenous)].to_numpy(dtype=np.float64).T
