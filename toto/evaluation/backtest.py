"""Rolling-origin backtests: forecast the last windows of every item and score them against
seasonal naive, windows cut as GluonTS's ``split`` + ``generate_instances`` cut them.

Two steps, so workers can score disjoint shares of the items: :func:`score_items` reduces
each (item, window, target) row to totals, :func:`finish_backtest` derives every metric from
summed totals (docs/ARCHITECTURE.md, "Notes by module"). Needs pandas (extra ``pandas``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..frames.options import DEFAULT_FRAME_BATCH_SIZE, DEFAULT_FRAME_SAMPLES, DEFAULT_QUANTILES, FrameOptions
from ..frames.panel import Panel, forecast_frame, quantile_column, read_panel, require_pandas
from ..pipeline import TotoPipeline
from ..arguments import check_int
from .metrics import _quantile_loss, scaled_errors, seasonal_error, seasonal_naive

__all__ = [
    "BacktestOptions",
    "BacktestParts",
    "BacktestResult",
    "backtest",
    "finish_backtest",
    "metrics_from_totals",
    "score_items",
    "seasonality_of",
    "totals_columns",
]

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


@dataclass(frozen=True)
class BacktestParts:
    """What :func:`score_items` measured on some items, for :func:`finish_backtest`.

    * ``forecasts``: as :class:`BacktestResult`'s.
    * ``totals``: one row per (item, window, target): the keys (id column, ``window``,
      ``cutoff``, ``target_name``), then :func:`totals_columns`, each a sum over the
      row's observed (finite) actuals:

      - ``observed``: their number; ``abs_actual``: the sum of their ``|actual|``;
      - per model ``<m>`` (``toto``, then ``seasonal_naive``, whose point forecast stands
        for its median, mean and every quantile): ``<m>_abs_error_sum`` of ``|actual - median|``,
        ``<m>_squared_error_sum`` of ``(actual - mean)^2``, ``<m>_inside``: how many lie in
        the closed interval,
        ``<m>_mase_sum`` of ``|actual - median| / scale`` over the ``<m>_mase_count``
        entries where that is defined (none when the scale is 0), and
        ``<m>_quantile_loss_<level>`` (e.g. ``toto_quantile_loss_0.1``) of twice the
        pinball loss, per level.

    * ``seasonality``: item -> season; ``levels``: the quantile levels; ``interval``:
      its (low, high) levels.
    """

    forecasts: Any
    totals: Any
    seasonality: dict
    levels: list[float]
    interval: tuple[float, float]


@dataclass(frozen=True)
class BacktestOptions:
    """Which windows a backtest cuts and how it scores them (``stride=None``: the horizon;
    ``seasonality=None``: each item's frequency's); checked once, errors name the argument."""

    windows: int = 1
    stride: int | None = None
    interval: tuple[float, float] = (0.1, 0.9)
    seasonality: int | None = None

    def __post_init__(self) -> None:
        check_int("windows", self.windows)
        if self.stride is not None:
            check_int("stride", self.stride)
        if self.seasonality is not None:
            check_int("seasonality", self.seasonality)

    def stride_for(self, prediction_length: int) -> int:
        return prediction_length if self.stride is None else self.stride

    def interval_levels(self, levels: Sequence[float]) -> tuple[float, float]:
        """The interval's (low, high) levels; both must be among the forecast ``levels``."""
        low, high = _interval_columns(self.interval, list(levels))
        return levels[low], levels[high]


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
    num_samples: int = DEFAULT_FRAME_SAMPLES,
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
    This is :func:`finish_backtest` of :func:`score_items` on the whole frame.
    """
    frame = FrameOptions(
        prediction_length, id_column, timestamp_column, target, quantile_levels, num_samples, samples_per_batch,
        batch_size, seed,
    )  # fmt: skip
    options = BacktestOptions(windows, stride, interval, seasonality)
    return finish_backtest(score_items(pipeline, df, frame, options, show_progress=show_progress), id_column)


def score_items(
    pipeline: TotoPipeline,
    df: Any,
    frame: FrameOptions,
    options: BacktestOptions = BacktestOptions(),
    *,
    show_progress: bool | None = None,
) -> BacktestParts:
    """:func:`backtest`'s first step on the items ``df`` holds (all of them, or one worker's
    share): their windows' forecasts and each (item, window, target) row's totals."""
    pd = require_pandas()
    horizon, levels = frame.prediction_length, list(frame.quantile_levels)
    low, high = _interval_columns(options.interval, levels)
    panel = read_panel(
        df, None, id_column=frame.id_column, timestamp_column=frame.timestamp_column, target=frame.targets,
        prediction_length=horizon,
    )  # fmt: skip
    windowed = cut_windows(panel, horizon, options.windows, options.stride_for(horizon))
    seasons = {item.item_id: options.seasonality or seasonality_of(item.step) for item in panel.items}
    summaries = pipeline.predict_panel(windowed, frame, show_progress=show_progress)
    forecasts = forecast_frame(windowed, summaries, levels)
    rows_per_window = len(panel.targets) * horizon
    window_ids = np.tile(np.arange(options.windows), len(panel.items))
    forecasts.insert(2, "window", np.repeat(window_ids, rows_per_window))
    cutoffs = pd.Index([item.timestamps[-1] for item in windowed.items])
    forecasts.insert(3, "cutoff", cutoffs.repeat(rows_per_window))

    scored = _Scored.of(panel, windowed, summaries, seasons, horizon, levels, (low, high))
    keys = pd.DataFrame(
        {
            frame.id_column: pd.Index([item.item_id for item in windowed.items]).repeat(len(panel.targets)),
            "window": np.repeat(window_ids, len(panel.targets)),
            "cutoff": cutoffs.repeat(len(panel.targets)),
            "target_name": np.tile(np.array(panel.targets, dtype=object), len(windowed.items)),
        }
    )
    totals = pd.concat([keys, pd.DataFrame(scored.totals())], axis=1)
    return BacktestParts(forecasts, totals, seasons, levels, (levels[low], levels[high]))


def finish_backtest(parts: BacktestParts | Sequence[BacktestParts], id_column: str = "item_id") -> BacktestResult:
    """:func:`backtest`'s second step: the result of one or more disjoint :class:`BacktestParts`.

    Several parts (one per worker, each from :func:`score_items` on its own items) are
    concatenated in the order given, which orders ``forecasts``, ``metrics`` and
    ``per_item``. A driver that already holds the concatenated ``forecasts`` and
    ``totals`` frames and the merged seasonality passes ``BacktestParts(forecasts, totals,
    seasonality, levels, interval)``. ``id_column`` is the one ``score_items`` was given.
    """
    pd = require_pandas()
    parts = [parts] if isinstance(parts, BacktestParts) else list(parts)
    if not parts:
        raise ValueError("finish_backtest needs at least one BacktestParts")
    first = parts[0]
    if any(part.levels != first.levels or part.interval != first.interval for part in parts):
        raise ValueError("every part must be scored with the same quantile_levels and interval")
    seasonality = {item: season for part in parts for item, season in part.seasonality.items()}
    if len(seasonality) != sum(len(part.seasonality) for part in parts):
        # An item in two parts would count twice in every aggregate.
        raise ValueError("parts must hold disjoint items")
    if len(parts) == 1:
        forecasts, totals = first.forecasts, first.totals
    else:
        forecasts = pd.concat([part.forecasts for part in parts], ignore_index=True)
        totals = pd.concat([part.totals for part in parts], ignore_index=True)
    levels = first.levels
    metrics = metrics_from_totals(totals, levels, by=[id_column, "window", "cutoff", "target_name"])
    per_item = metrics_from_totals(totals, levels, by=[id_column, "target_name"])
    per_window = metrics_from_totals(totals, levels, by="window")
    overall = metrics_from_totals(totals, levels).iloc[0]
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
    return BacktestResult(forecasts, metrics, per_item, per_window, summary, seasonality, first.interval)


def totals_columns(levels: Sequence[float]) -> list[str]:
    """The totals columns of :class:`BacktestParts` for quantile ``levels``, in order."""
    per_model = ["mase_sum", "mase_count", "abs_error_sum", "squared_error_sum", "inside"]
    per_model += [f"quantile_loss_{quantile_column(level)}" for level in levels]
    return ["observed", "abs_actual", *(f"{model}_{name}" for model in (MODEL, BASELINE) for name in per_model)]


def metrics_from_totals(totals: Any, levels: Sequence[float], by: str | Sequence[str] | None = None) -> Any:
    """Each metric (Toto's, then ``seasonal_naive_<metric>``) from the summed totals of each
    group of rows with equal ``by`` columns (groups in order of first appearance, ``by``
    columns first), or of all rows (one row, metrics only) when ``by`` is None.

    Every metric is a ratio of sums over observed entries, as :mod:`toto.evaluation.metrics`
    aggregates with ``axis=None``, so any split of the rows into parts gives the same
    groups' metrics once the parts' totals are concatenated.
    """
    pd = require_pandas()
    columns = totals_columns(levels)
    keys = [] if by is None else [by] if isinstance(by, str) else list(by)
    # One code path for both: no ``by`` is a single group.
    grouping = keys or np.zeros(len(totals), dtype=int)
    sums = totals.groupby(grouping, sort=False, dropna=False)[columns].sum().reset_index(drop=not keys)
    total = {name: sums[name].to_numpy(dtype=float) for name in columns}
    metrics = {}
    for model in (MODEL, BASELINE):
        prefix = "" if model == MODEL else f"{BASELINE}_"
        losses = np.array([total[f"{model}_quantile_loss_{quantile_column(level)}"] for level in levels])
        with np.errstate(divide="ignore", invalid="ignore"):  # no observed (or only zero) actuals: NaN or inf
            metrics[f"{prefix}MASE"] = total[f"{model}_mase_sum"] / total[f"{model}_mase_count"]
            metrics[f"{prefix}WQL"] = np.mean(losses / total["abs_actual"], axis=0)
            metrics[f"{prefix}MAE"] = total[f"{model}_abs_error_sum"] / total["observed"]
            metrics[f"{prefix}RMSE"] = np.sqrt(total[f"{model}_squared_error_sum"] / total["observed"])
            metrics[f"{prefix}coverage"] = total[f"{model}_inside"] / total["observed"]
    return pd.concat([sums[keys], pd.DataFrame(metrics)], axis=1)


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

    def totals(self) -> dict[str, np.ndarray]:
        """Each row's totals (see :class:`BacktestParts`), with :mod:`~toto.evaluation.metrics`' masking."""
        if not all(np.isfinite(a).all() for a in (self.quantiles, self.median, self.mean, self.naive)):
            raise ValueError("forecasts must be finite (forecasts may not hold NaN or inf)")
        observed = np.isfinite(self.actual)
        actual = np.where(observed, self.actual, 0.0)  # zeroed so arithmetic on missing entries stays quiet

        def total(values: np.ndarray, keep: np.ndarray = observed) -> np.ndarray:
            return np.where(keep, values, 0.0).sum(axis=-1)

        low, high = self.interval
        scale = self.scale[:, None]
        naive_quantiles = np.repeat(self.naive[:, None], len(self.levels), axis=1)
        columns = {"observed": observed.sum(axis=-1), "abs_actual": total(np.abs(actual))}
        for model, (point, mean, quantiles) in {
            MODEL: (self.median, self.mean, self.quantiles),
            BASELINE: (self.naive, self.naive, naive_quantiles),
        }.items():
            error = np.abs(actual - point)
            scaled, defined = scaled_errors(error, scale)
            defined &= observed
            inside = observed & (quantiles[:, low] <= actual) & (actual <= quantiles[:, high])
            columns[f"{model}_mase_sum"] = total(scaled, defined)
            columns[f"{model}_mase_count"] = defined.sum(axis=-1)
            columns[f"{model}_abs_error_sum"] = total(error)
            columns[f"{model}_squared_error_sum"] = total(np.square(actual - mean))
            columns[f"{model}_inside"] = inside.sum(axis=-1)
            for index, level in enumerate(self.levels):
                loss = _quantile_loss(actual, quantiles[:, index], level)
                columns[f"{model}_quantile_loss_{quantile_column(level)}"] = total(loss)
        return columns


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
