"""Plots of forecasts and backtests, drawn from the long pandas frames the pipeline returns.

Needs matplotlib (``pip install "toto-compiled[plot]"``) and pandas
(``pip install "toto-compiled[pandas]"``); both are imported only when a plot is made.
Figures are built as bare :class:`matplotlib.figure.Figure` objects rendered by the Agg
canvas, so pyplot's global state and the user's chosen backend are never touched.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Hashable, Sequence

from ..arguments import check_int

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MEDIAN_COLUMN = "predictions"
TARGET_NAME_COLUMN = "target_name"
WINDOW_COLUMN = "window"
CUTOFF_COLUMN = "cutoff"
DPI = 100
ACTUAL_COLOUR = "black"
BAND_ALPHA = 0.25


def plot_forecast(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    *,
    item_id: Hashable | None = None,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    target: Hashable | Sequence[Hashable] = "target",
    interval: tuple[float, float] = (0.1, 0.9),
    max_history: int | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """One item's history, median forecast and ``interval`` quantile band, one axes per target.

    ``forecast`` is the frame from ``TotoPipeline.predict_df``; ``item_id`` defaults to its
    first item. ``max_history`` keeps only the last that many history points. With ``path``
    the figure is also saved there (PNG unless the suffix names another format).
    """
    item, targets, low, high, actual, rows = _prepare(
        history, forecast, "forecast", (), item_id, id_column, timestamp_column, target, interval, max_history
    )
    fig, axes = _figure(len(targets), title if title is not None else f"Forecast for {id_column} {item!r}")
    for ax, name in zip(axes, targets):
        _draw_actual(ax, actual, timestamp_column, name, label="history")
        forecast_rows = _target_rows(rows, name, item)
        _draw_forecast(ax, forecast_rows, timestamp_column, low, high, "C0", "median", _band_label(low, high))
    return _finish(fig, axes, targets, timestamp_column, path)


def plot_backtest(
    history: pd.DataFrame,
    forecasts: pd.DataFrame,
    *,
    item_id: Hashable | None = None,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    target: Hashable | Sequence[Hashable] = "target",
    interval: tuple[float, float] = (0.1, 0.9),
    max_history: int | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """One item's actual series with every backtest window's median, band and cutoff, one axes per target.

    ``history`` is the full series (held-out windows included); ``forecasts`` is the frame
    from ``toto.evaluation.backtest`` (a forecast frame plus ``window`` and ``cutoff``).
    Each window gets its own colour and a dashed vertical line at its cutoff.
    """
    item, targets, low, high, actual, rows = _prepare(
        history,
        forecasts,
        "forecasts",
        (WINDOW_COLUMN, CUTOFF_COLUMN),
        item_id,
        id_column,
        timestamp_column,
        target,
        interval,
        max_history,
    )
    fig, axes = _figure(len(targets), title if title is not None else f"Backtest for {id_column} {item!r}")
    for ax, name in zip(axes, targets):
        _draw_actual(ax, actual, timestamp_column, name, label="actual")
        windows = _target_rows(rows, name, item).groupby(WINDOW_COLUMN, sort=True)
        for k, (window, window_rows) in enumerate(windows):
            colour = f"C{k % 10}"
            # A legend entry per window for its median only: band and cutoff mean the same in every window.
            band_label = _band_label(low, high) if k == 0 else None
            _draw_forecast(ax, window_rows, timestamp_column, low, high, colour, f"window {window}", band_label)
            cutoff = window_rows[CUTOFF_COLUMN].iloc[0]
            ax.axvline(cutoff, color=colour, linestyle="--", linewidth=1, label="cutoff" if k == 0 else None)
    return _finish(fig, axes, targets, timestamp_column, path)


def plot_anomalies(
    scores: pd.DataFrame,
    *,
    item_id: Hashable | None = None,
    id_column: str | None = "item_id",
    timestamp_column: str = "timestamp",
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """One item's values with its flagged steps marked, one axes per target.

    ``scores`` is the frame of ``TotoPipeline.detect_anomalies_df`` (``id_column`` None: a
    frame of one series, without an id column); ``item_id`` defaults to its first item.
    """
    _check_columns(scores, "scores", [timestamp_column, TARGET_NAME_COLUMN, "value", "anomaly"]
                   + ([id_column] if id_column is not None else []))  # fmt: skip
    rows = scores
    if id_column is not None:
        item = scores[id_column].iloc[0] if item_id is None else item_id
        rows = _item_rows(scores, "scores", id_column, item)
    targets = list(dict.fromkeys(rows[TARGET_NAME_COLUMN]))
    named = "" if id_column is None else f" of {id_column} {item!r}"
    fig, axes = _figure(len(targets), title if title is not None else f"Anomalies{named}")
    for ax, name in zip(axes, targets):
        series = _target_rows(rows, name, named).sort_values(timestamp_column, kind="stable")
        x, y = series[timestamp_column].to_numpy(), series["value"].to_numpy(dtype=float)
        ax.plot(x, y, color=ACTUAL_COLOUR, linewidth=1, label="observed")
        flagged = series["anomaly"].to_numpy(dtype=bool)
        ax.scatter(x[flagged], y[flagged], color="C3", s=24, zorder=3, label=f"flagged ({int(flagged.sum())})")
    return _finish(fig, axes, targets, timestamp_column, path)


def _prepare(
    history: Any,
    forecast: Any,
    name: str,
    extra_columns: Sequence[str],
    item_id: Hashable | None,
    id_column: str,
    timestamp_column: str,
    target: Hashable | Sequence[Hashable],
    interval: tuple[float, float],
    max_history: int | None,
) -> tuple[Hashable, list[Hashable], str, str, pd.DataFrame, pd.DataFrame]:
    """Validate the inputs; return the item, targets, band columns, its history and its forecast rows."""
    _require_matplotlib()  # fail on the missing extra before complaining about the data
    if max_history is not None:
        check_int("max_history", max_history)
    targets = list(target) if isinstance(target, (list, tuple)) else [target]
    if not targets:
        raise ValueError("target must name at least one column")
    low, high = _interval_columns(interval)

    _check_columns(history, "history", [id_column, timestamp_column, *targets])
    required = [id_column, timestamp_column, TARGET_NAME_COLUMN, MEDIAN_COLUMN, *extra_columns]
    _check_columns(forecast, name, required)
    missing = [c for c in (low, high) if c not in forecast.columns]
    if missing:
        raise ValueError(
            f"{name} has no quantile column(s) {missing} for interval={tuple(interval)!r}; "
            f"available quantile columns: {_quantile_columns(forecast)}"
        )
    if forecast.empty:
        raise ValueError(f"{name} has no rows")

    item = forecast[id_column].iloc[0] if item_id is None else item_id
    rows = _item_rows(forecast, name, id_column, item)
    actual = _item_rows(history, "history", id_column, item).sort_values(timestamp_column, kind="stable")
    if max_history is not None:
        actual = actual.tail(max_history)
    return item, targets, low, high, actual, rows


def _require_matplotlib() -> tuple[type, type]:
    try:
        # The package itself first: a submodule still cached in sys.modules would otherwise import fine.
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('plotting needs matplotlib: pip install "toto-compiled[plot]"') from err
    return Figure, FigureCanvasAgg


def _check_columns(frame: Any, name: str, columns: Sequence[Hashable]) -> None:
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError('plotting needs pandas: pip install "toto-compiled[pandas]"') from err
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} has no column(s) {missing}; its columns: {list(frame.columns)}")


def _interval_columns(interval: tuple[float, float]) -> tuple[str, str]:
    """The forecast frame's column names (``str(float(level))``) for the band's two levels."""
    try:
        low, high = (float(level) for level in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a (low, high) pair of quantile levels, got {interval!r}") from None
    if not 0 < low < high < 1:
        raise ValueError(f"interval must satisfy 0 < low < high < 1, got {interval!r}")
    return str(low), str(high)


def _quantile_columns(frame: pd.DataFrame) -> list[Hashable]:
    found = []
    for column in frame.columns:
        try:
            float(column)
        except (TypeError, ValueError):
            continue
        found.append(column)
    return found


def _item_rows(frame: pd.DataFrame, name: str, id_column: str, item: Hashable) -> pd.DataFrame:
    rows = frame[frame[id_column] == item]
    if rows.empty:
        known = frame[id_column].unique()[:10].tolist()
        raise ValueError(f"item {item!r} not found in {name}[{id_column!r}]; items there include {known}")
    return rows


def _target_rows(rows: pd.DataFrame, target: Hashable, item: Hashable) -> pd.DataFrame:
    selected = rows[rows[TARGET_NAME_COLUMN] == target]
    if selected.empty:
        known = rows[TARGET_NAME_COLUMN].unique().tolist()
        raise ValueError(
            f"no forecast rows for target {target!r} of item {item!r}; its {TARGET_NAME_COLUMN} values: {known}"
        )
    return selected


def _band_label(low: str, high: str) -> str:
    return f"{float(low) * 100:g}–{float(high) * 100:g}% interval"


def _figure(n_axes: int, title: str) -> tuple[Figure, list[Axes]]:
    figure_class, canvas_class = _require_matplotlib()
    fig = figure_class(figsize=(10, 1 + 3 * n_axes), layout="constrained")
    canvas_class(fig)  # attaches itself: savefig then renders with Agg whatever backend is active
    axes = list(fig.subplots(n_axes, 1, sharex=True, squeeze=False)[:, 0])
    fig.suptitle(title)
    return fig, axes


def _draw_actual(ax: Axes, actual: pd.DataFrame, timestamp_column: str, target: Hashable, label: str) -> None:
    x, y = actual[timestamp_column].to_numpy(), actual[target].to_numpy(dtype=float)
    ax.plot(x, y, color=ACTUAL_COLOUR, linewidth=1, label=label)


def _draw_forecast(
    ax: Axes,
    rows: pd.DataFrame,
    timestamp_column: str,
    low: str,
    high: str,
    colour: str,
    label: str,
    band_label: str | None,
) -> None:
    """The median line and the shaded band between the ``low`` and ``high`` quantile columns."""
    rows = rows.sort_values(timestamp_column, kind="stable")
    x = rows[timestamp_column].to_numpy()
    lower, upper = rows[low].to_numpy(dtype=float), rows[high].to_numpy(dtype=float)
    ax.fill_between(x, lower, upper, color=colour, alpha=BAND_ALPHA, linewidth=0, label=band_label)
    ax.plot(x, rows[MEDIAN_COLUMN].to_numpy(dtype=float), color=colour, linewidth=1.5, label=label)


def _finish(
    fig: Figure, axes: list[Axes], targets: list[Hashable], timestamp_column: str, path: str | os.PathLike | None
) -> Figure:
    for ax, name in zip(axes, targets):
        ax.set_ylabel(str(name))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel(str(timestamp_column))
    if path is not None:
        fig.savefig(os.fspath(path), dpi=DPI)
    return fig
