"""Rolling-origin backtests: forecast the last windows of every item and score them against seasonal naive.

Window ``w`` of ``windows`` (0 = earliest) ends each item's context
``prediction_length + (windows - 1 - w) * stride`` steps before its last timestamp
and holds out the ``prediction_length`` steps after it, as GluonTS's
``split(..., offset=-prediction_length - (windows - 1) * stride)`` followed by
``generate_instances(prediction_length, windows, distance=stride)`` does. All
windows of all items are forecast in length-sorted batches of one pipeline call.
Metrics follow :mod:`toto.evaluation.metrics` (GluonTS's definitions): MAE and MASE
score the median, RMSE the mean, WQL the quantiles, and coverage the interval.
Needs pandas (extra ``toto-compiled[pandas]``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..frames import Panel, check_quantile_levels, forecast_frame, read_panel, require_pandas
from ..pipeline import DEFAULT_FRAME_BATCH_SIZE, DEFAULT_QUANTILES, TotoPipeline
from ..validation import check_int
from .metrics import interval_coverage, mae, mase, rmse, seasonal_error, seasonal_naive, wql

__all__ = ["BacktestResult", "backtest", "seasonality_of"]

MODEL = "toto"
BASELINE = "seasonal_naive"
METRICS = ("MASE", "WQL", "MAE", "RMSE", "coverage")
ERROR_METRICS = ("MASE", "WQL", "MAE", "RMSE")  # lower is better, so a ratio to the baseline means something
# Seasonal period per base frequency, as GluonTS's get_seasonality reads pandas offsets.
BASE_SEASONALITY = {"s": 3600, "S": 3600, "min": 1440, "T": 1440, "h": 24, "H": 24, "D": 1, "W": 1,
                    "M": 12, "ME": 12, "B": 5, "Q": 4, "QE": 4}  # fmt: skip


@dataclass(frozen=True)
class BacktestResult:
    """Everything a backtest measured.

    * ``forecasts``: :meth:`TotoPipeline.predict_df`'s columns plus ``window`` (0 =
      earliest) and ``cutoff`` (the context's last timestamp).
    * ``metrics``: one row per (item, window, target): each metric for Toto, and
      ``seasonal_naive_<metric>`` for the baseline.
    * ``per_item`` (item, target), ``per_window`` (window): the same, aggregated.
    * ``summary``: one row per metric over everything: ``toto``, ``seasonal_naive`` and
      their ``ratio`` (below 1: Toto is better; NaN for coverage, whose target is the
      interval's nominal level).
    """

    forecasts: Any
    metrics: Any
    per_item: Any
    per_window: Any
    summary: Any
    seasonality: dict  # item -> the season used for MASE and seasonal naive
    interval: tuple[float, float]


def backtest(
    pipeline: TotoPipeline,
    df: Any,
    *,
    prediction_length: int,
    windows: int = 1,
    stride: int | None = None,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    target: str | Sequence[str] = "target",
    quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
    interval: tuple[float, float] = (0.1, 0.9),
    seasonality: int | None = None,
    num_samples: int = 256,
    samples_per_batch: int | None = None,
    batch_size: int = DEFAULT_FRAME_BATCH_SIZE,
    seed: int | None = None,
    show_progress: bool | None = None,
) -> BacktestResult:
    """Forecast the last ``windows`` windows of every item of a long frame, ``stride`` steps
    apart (default ``prediction_length``), and score them.

    ``seasonality`` (the MASE and seasonal-naive period) defaults to each item's
    frequency's, as GluonTS infers it (hourly 24, daily 1, monthly 12, ...; 1 for
    numeric timestamps). The frame is read as :meth:`TotoPipeline.predict_df` reads it.
    """
    pd = require_pandas()
    check_int("prediction_length", prediction_length)
    check_int("windows", windows)
    stride = prediction_length if stride is None else stride
    check_int("stride", stride)
    if seasonality is not None:
        check_int("seasonality", seasonality)
    levels = check_quantile_levels(quantile_levels)
    low, high = _interval_columns(interval, levels)
    check_int("num_samples", num_samples)
    panel = read_panel(
        df, None, id_column=id_column, timestamp_column=timestamp_column, target=target,
        prediction_length=prediction_length,
    )
    windowed = cut_windows(panel, prediction_length, windows, stride)
    seasons = {item.item_id: seasonality or seasonality_of(item.step) for item in panel.items}
    summaries = pipeline.predict_panel(
        windowed,
        prediction_length,
        levels,
        num_samples,
        num_samples if samples_per_batch is None else samples_per_batch,
        batch_size,
        seed=seed,
        show_progress=show_progress,
    )
    forecasts = forecast_frame(windowed, summaries, levels)
    rows_per_window = len(panel.targets) * prediction_length
    window_ids = np.tile(np.arange(windows), len(panel.items))
    forecasts.insert(2, "window", np.repeat(window_ids, rows_per_window))
    cutoffs = pd.Index([item.timestamps[-1] for item in windowed.items])
    forecasts.insert(3, "cutoff", cutoffs.repeat(rows_per_window))

    scored = _Scored.of(panel, windowed, summaries, seasons, prediction_length, levels, (low, high))
    keys = pd.DataFrame(
        {
            id_column: pd.Index([item.item_id for item in windowed.items]).repeat(len(panel.targets)),
            "window": np.repeat(window_ids, len(panel.targets)),
            "cutoff": cutoffs.repeat(len(panel.targets)),
            "target_name": np.tile(np.array(panel.targets, dtype=object), len(windowed.items)),
        }
    )
    metrics = pd.concat([keys, pd.DataFrame(scored.metrics(axis=1))], axis=1)
    per_item = _grouped(scored, keys, [id_column, "target_name"])
    per_window = _grouped(scored, keys, ["window"])
    overall = scored.metrics(axis=None)
    summary = pd.DataFrame(
        {
            MODEL: [overall[name] for name in METRICS],
            BASELINE: [overall[f"{BASELINE}_{name}"] for name in METRICS],
        },
        index=pd.Index(METRICS, name="metric"),
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        summary["ratio"] = [
            summary.at[name, MODEL] / summary.at[name, BASELINE] if name in ERROR_METRICS else np.nan for name in METRICS
        ]
    return BacktestResult(forecasts, metrics, per_item, per_window, summary, seasons, (levels[low], levels[high]))


def cut_windows(panel: Panel, prediction_length: int, windows: int, stride: int) -> Panel:
    """One item per (item, window), window-major within each item; each holds its context and horizon."""
    items = []
    for item in panel.items:
        length = item.values.shape[1]
        fit = 0 if length <= prediction_length else (length - prediction_length - 1) // stride + 1
        if windows > fit:
            raise ValueError(
                f"windows={windows}: item {item.item_id!r} has {length} steps, room for at most {fit} window(s) "
                f"of prediction_length {prediction_length} with stride {stride} and at least one context step"
            )
        for window in range(windows):
            cut = length - prediction_length - (windows - 1 - window) * stride
            context = item.values[:, :cut]
            for name, row in zip(panel.targets, context):
                if np.isnan(row).all():
                    raise ValueError(
                        f"item {item.item_id!r}, window {window}: no observed value in column {name!r} "
                        "before the cutoff; use fewer windows"
                    )
            horizon = item.timestamps[cut : cut + prediction_length]
            items.append(replace(item, timestamps=item.timestamps[:cut], values=context, future_timestamps=horizon))
    return replace(panel, items=items)


def seasonality_of(step: Any) -> int:
    """The seasonal period GluonTS's ``get_seasonality`` gives a step (a pandas offset or
    Timedelta); 1 for numeric steps and unknown frequencies."""
    pd = require_pandas()
    if isinstance(step, pd.Timedelta):
        step = pd.tseries.frequencies.to_offset(step)
    if not isinstance(step, pd.DateOffset):
        return 1
    base = step.name.split("-")[0]
    if len(base) >= 2 and base.endswith("S"):  # period starts count as period ends ("MS" -> "ME")
        base = base[:-1] + "E"
    period, remainder = divmod(BASE_SEASONALITY.get(base, 1), step.n)
    return period if remainder == 0 else 1


@dataclass(frozen=True)
class _Scored:
    """Per (item, window, target) row: actuals, Toto's and the baseline's forecasts, MASE scales."""

    actual: np.ndarray  # (rows, H)
    quantiles: np.ndarray  # (rows, levels, H)
    median: np.ndarray
    mean: np.ndarray
    naive: np.ndarray
    scale: np.ndarray  # (rows,)
    levels: list[float]
    interval: tuple[int, int]  # indices of the interval's levels

    @classmethod
    def of(cls, panel: Panel, windowed: Panel, summaries: np.ndarray, seasons: dict, horizon: int,
           levels: list[float], interval: tuple[int, int]) -> "_Scored":  # fmt: skip
        targets = len(panel.targets)
        by_id = {item.item_id: item for item in panel.items}
        actual, naive, scale = [], [], []
        for item in windowed.items:
            whole = by_id[item.item_id].values
            cut = item.values.shape[1]
            season = seasons[item.item_id]
            for t in range(targets):
                actual.append(whole[t, cut : cut + horizon])
                naive.append(seasonal_naive(item.values[t], horizon, season))
                scale.append(seasonal_error(item.values[t], season))
        flat = summaries.reshape(len(windowed.items) * targets, horizon, -1)
        count = len(levels)
        return cls(
            actual=np.array(actual),
            quantiles=np.moveaxis(flat[..., :count], -1, 1),
            median=flat[..., count],
            mean=flat[..., count + 1],
            naive=np.array(naive),
            scale=np.array(scale, dtype=float),
            levels=levels,
            interval=interval,
        )

    def subset(self, rows: np.ndarray) -> "_Scored":
        return replace(
            self, actual=self.actual[rows], quantiles=self.quantiles[rows], median=self.median[rows],
            mean=self.mean[rows], naive=self.naive[rows], scale=self.scale[rows],
        )

    def metrics(self, axis: int | None) -> dict[str, Any]:
        """Toto's metrics, then the baseline's (``seasonal_naive_<metric>``), over ``axis`` (gluonts' meaning)."""
        low, high = self.interval
        flat_naive = np.repeat(self.naive[:, None], len(self.levels), axis=1)
        return {
            "MASE": mase(self.actual, self.median, scale=self.scale, axis=axis),
            "WQL": wql(self.actual, self.quantiles, self.levels, axis=axis),
            "MAE": mae(self.actual, self.median, axis=axis),
            "RMSE": rmse(self.actual, self.mean, axis=axis),
            "coverage": interval_coverage(self.actual, self.quantiles[:, low], self.quantiles[:, high], axis=axis),
            f"{BASELINE}_MASE": mase(self.actual, self.naive, scale=self.scale, axis=axis),
            f"{BASELINE}_WQL": wql(self.actual, flat_naive, self.levels, axis=axis),
            f"{BASELINE}_MAE": mae(self.actual, self.naive, axis=axis),
            f"{BASELINE}_RMSE": rmse(self.actual, self.naive, axis=axis),
            f"{BASELINE}_coverage": interval_coverage(self.actual, self.naive, self.naive, axis=axis),
        }


def _grouped(scored: _Scored, keys: Any, by: list[str]) -> Any:
    """The metrics aggregated (``axis=None``) within each group of rows."""
    pd = require_pandas()
    records = []
    for group_key, rows in keys.groupby(by, sort=False).indices.items():
        group_key = group_key if isinstance(group_key, tuple) else (group_key,)
        records.append({**dict(zip(by, group_key)), **scored.subset(rows).metrics(axis=None)})
    return pd.DataFrame.from_records(records)


def _interval_columns(interval: tuple[float, float], levels: list[float]) -> tuple[int, int]:
    """Indices in ``levels`` of the interval's bounds; both must be forecast."""
    try:
        low, high = (float(q) for q in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be two quantile levels (low, high), got {interval!r}") from None
    missing = [q for q in (low, high) if q not in levels]
    if missing or not low < high:
        raise ValueError(
            f"interval={interval!r} must be two increasing levels among quantile_levels {levels}"
            + (f"; missing {missing}" if missing else "")
        )
    return levels.index(low), levels.index(high)
