"""toto.evaluation.backtest: windows as GluonTS cuts them, metrics as GluonTS computes them, on real data too."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from toto import TotoPipeline  # noqa: E402
from toto.evaluation import backtest, seasonality_of  # noqa: E402
from toto.evaluation.backtest import (  # noqa: E402
    BacktestOptions,
    BacktestParts,
    _Scored,
    finish_backtest,
    metrics_from_totals,
    score_items,
    totals_columns,
)
from toto.frames.options import FrameOptions  # noqa: E402
from toto.evaluation.metrics import interval_coverage, mae, mase, rmse, wql  # noqa: E402

LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
RTOL = 1e-6
KEYS = ["item_id", "window", "cutoff", "target_name"]
METRIC_COLUMNS = ["MASE", "WQL", "MAE", "RMSE", "coverage"]


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


def panel(lengths, freq="h", seed=0, missing=0.0):
    """Items of daily-seasonal series (period 24 steps), ragged lengths and starts, ``missing`` NaN share."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, n in enumerate(lengths):
        t = np.arange(n)
        values = 20 + 5 * np.sin(2 * np.pi * t / 24 + i) + rng.normal(size=n).cumsum() * 0.3
        values[rng.random(n) < missing] = np.nan
        start = pd.Timestamp("2024-01-01") + i * pd.Timedelta(hours=7)
        parts.append(pd.DataFrame({"item_id": f"s{i}", "timestamp": pd.date_range(start, periods=n, freq=freq),
                                   "target": values}))  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def gluonts_evaluation(df, forecasts, horizon, windows, stride, season, axis):
    """gluonts' own window cutting and ``evaluate_forecasts`` on our forecasts of each window."""
    pytest.importorskip("gluonts")
    from gluonts.dataset.split import split
    from gluonts.ev.metrics import MAE, MASE, RMSE, Coverage, MeanWeightedSumQuantileLoss
    from gluonts.model import QuantileForecast, evaluate_forecasts

    dataset = [
        {"item_id": item, "start": pd.Period(rows.timestamp.iloc[0], freq="h"), "target": rows.target.to_numpy()}
        for item, rows in df.groupby("item_id", sort=False)
    ]
    _, template = split(dataset, offset=-horizon - (windows - 1) * stride)
    test_data = template.generate_instances(prediction_length=horizon, windows=windows, distance=stride)
    keys = [*map(str, LEVELS), "mean"]
    quantile_forecasts = []
    windows_by_start = {(item, rows.timestamp.iloc[0]): rows for (item, _), rows in forecasts.groupby(["item_id", "window"])}
    assert len(windows_by_start) == len(test_data.label)
    for label in test_data.label:
        rows = windows_by_start[label["item_id"], label["start"].to_timestamp()]  # the same windows
        quantile_forecasts.append(
            QuantileForecast(rows[keys].to_numpy().T, start_date=label["start"], forecast_keys=keys,
                             item_id=label["item_id"])  # fmt: skip
        )
    metrics = [MAE(), RMSE(), MASE(), MeanWeightedSumQuantileLoss(LEVELS), Coverage(0.1), Coverage(0.9)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = evaluate_forecasts(quantile_forecasts, test_data=test_data, metrics=metrics, axis=axis,
                                   seasonality=season)  # fmt: skip
    coverage = frame["coverage[0.9]"].to_numpy() - frame["coverage[0.1]"].to_numpy()
    return {
        "MAE": frame["MAE[0.5]"].to_numpy(),
        "RMSE": frame["RMSE[mean]"].to_numpy(),
        "MASE": frame["MASE[0.5]"].to_numpy(),
        "WQL": frame["mean_weighted_sum_quantile_loss"].to_numpy(),
        "coverage": coverage,
    }


@pytest.mark.parametrize(("windows", "stride", "missing"), [(1, None, 0.0), (3, 10, 0.1)], ids=["one", "rolling-nan"])
def test_metrics_equal_gluonts_on_the_same_forecasts(pipeline, windows, stride, missing):
    df = panel([150, 200, 120, 90], missing=missing)
    result = backtest(pipeline, df, prediction_length=20, windows=windows, stride=stride, quantile_levels=LEVELS,
                      num_samples=64, seed=0)  # fmt: skip
    assert result.seasonality == {f"s{i}": 24 for i in range(4)}
    stride = stride or 20
    overall = gluonts_evaluation(df, result.forecasts, 20, windows, stride, 24, axis=None)
    per_row = gluonts_evaluation(df, result.forecasts, 20, windows, stride, 24, axis=1)
    for name in ("MASE", "WQL", "MAE", "RMSE", "coverage"):
        assert np.allclose(result.summary.at[name, "toto"], overall[name], rtol=RTOL, atol=1e-12), name
        assert np.allclose(result.metrics[name], per_row[name], rtol=RTOL, atol=1e-12, equal_nan=True), name
    assert len(result.metrics) == 4 * windows and list(result.per_window.window) == list(range(windows))


def test_seasonal_naive_equals_gluonts_predictor(pipeline):
    pytest.importorskip("gluonts")
    from gluonts.dataset.split import split
    from gluonts.model.seasonal_naive import SeasonalNaivePredictor

    df = panel([100, 130, 75])
    result = backtest(pipeline, df, prediction_length=12, windows=2, num_samples=16, seed=0)
    dataset = [{"item_id": item, "start": pd.Period(rows.timestamp.iloc[0], freq="h"), "target": rows.target.to_numpy()}
               for item, rows in df.groupby("item_id", sort=False)]  # fmt: skip
    _, template = split(dataset, offset=-24)
    test_data = template.generate_instances(prediction_length=12, windows=2, distance=12)
    predictor = SeasonalNaivePredictor(prediction_length=12, season_length=24)
    naive = np.stack([f.samples[0] for f in predictor.predict(test_data.input)])
    actual = np.stack([label["target"] for label in test_data.label])
    mae = np.abs(actual - naive).mean(axis=1)
    assert np.allclose(result.metrics["seasonal_naive_MAE"], mae, rtol=RTOL)


@pytest.mark.parametrize("freq", ["h", "2h", "5h", "15min", "min", "s", "D", "W-SUN", "ME", "MS", "QE-DEC", "QS",
                                  "B", "YE", "10s", "7D"])  # fmt: skip
def test_seasonality_follows_gluonts(freq):
    gluonts_seasonality = pytest.importorskip("gluonts.time_feature").get_seasonality
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = gluonts_seasonality(freq)
    assert seasonality_of(pd.tseries.frequencies.to_offset(freq)) == expected


def test_seasonality_of_numbers_and_timedeltas():
    assert seasonality_of(5) == 1
    assert seasonality_of(pd.Timedelta(hours=1)) == 24


def test_too_many_windows_names_the_item_and_what_fits(pipeline):
    df = panel([100, 45])
    with pytest.raises(ValueError, match=r"item 's1' has 45 steps, room for at most 3 window\(s\)"):
        backtest(pipeline, df, prediction_length=12, windows=4, num_samples=4)
    backtest(pipeline, df, prediction_length=12, windows=3, num_samples=4)  # what the message says fits


def test_interval_must_be_forecast(pipeline):
    with pytest.raises(ValueError, match=r"missing \[0.05\]"):
        backtest(pipeline, panel([60]), prediction_length=12, interval=(0.05, 0.9), num_samples=4)


def test_window_forecasts_are_those_of_the_truncated_series(pipeline):
    """A window's forecast is predict_df on the series cut at its cutoff (same seed, one batch)."""
    df = panel([90])
    result = backtest(pipeline, df, prediction_length=12, windows=2, num_samples=32, seed=5, batch_size=2)
    # Both windows share one batch, longest (window 1) first, seeded 5.
    cut = df.iloc[: 90 - 12]
    alone = pipeline.predict_df(pd.concat([cut, df.iloc[: 90 - 24].assign(item_id="w0")]), prediction_length=12,
                                num_samples=32, seed=5, batch_size=2)  # fmt: skip
    window1 = result.forecasts[result.forecasts.window == 1]
    assert np.allclose(window1["predictions"].to_numpy(), alone[alone.item_id == "s0"]["predictions"].to_numpy())
    assert window1.cutoff.iloc[0] == cut.timestamp.iloc[-1]


# Real data nobody here wrote: datasets bundled with statsmodels.


def co2_frame():
    sm = pytest.importorskip("statsmodels.api")
    data = sm.datasets.co2.load_pandas().data  # weekly (W-SAT) Mauna Loa CO2, 1958-2001, 59 weeks missing
    frame = data.rename_axis("timestamp").reset_index().rename(columns={"co2": "target"})
    return frame.assign(item_id="mauna_loa")


def test_real_weekly_data_with_gaps(pipeline):
    df = co2_frame()
    assert df.target.isna().sum() > 0
    result = backtest(pipeline, df, prediction_length=26, windows=4, num_samples=32, seed=0)
    assert result.seasonality == {"mauna_loa": 1}  # gluonts: weekly data has seasonality 1
    forecasts = result.forecasts
    assert forecasts.timestamp.dt.dayofweek.eq(5).all()  # still Saturdays
    assert forecasts.cutoff.iloc[-1] == df.timestamp.iloc[-1] - pd.Timedelta(weeks=26)
    overall = gluonts_evaluation_weekly(df, forecasts, 26, 4)
    for name in ("MASE", "WQL", "MAE", "RMSE"):
        assert np.isclose(result.summary.at[name, "toto"], overall[name], rtol=RTOL), name
    # The seasonal naive baseline on real data is a real forecaster: the weekly change is small.
    assert result.summary.at["MASE", "seasonal_naive"] < 10


def gluonts_evaluation_weekly(df, forecasts, horizon, windows):
    pytest.importorskip("gluonts")
    from gluonts.dataset.split import split
    from gluonts.ev.metrics import MAE, MASE, RMSE, MeanWeightedSumQuantileLoss
    from gluonts.model import QuantileForecast, evaluate_forecasts

    dataset = [{"item_id": "mauna_loa", "start": pd.Period(df.timestamp.iloc[0], freq="W-SAT"),
                "target": df.target.to_numpy()}]  # fmt: skip
    _, template = split(dataset, offset=-horizon * windows)
    test_data = template.generate_instances(prediction_length=horizon, windows=windows, distance=horizon)
    keys = [*map(str, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)), "mean"]
    quantile_forecasts = [
        QuantileForecast(rows[keys].to_numpy().T, start_date=label["start"], forecast_keys=keys, item_id="mauna_loa")
        for label, (_, rows) in zip(test_data.label, forecasts.groupby("window"))
    ]
    metrics = [MAE(), RMSE(), MASE(), MeanWeightedSumQuantileLoss([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = evaluate_forecasts(quantile_forecasts, test_data=test_data, metrics=metrics, seasonality=1)
    return {"MAE": frame["MAE[0.5]"].iloc[0], "RMSE": frame["RMSE[mean]"].iloc[0], "MASE": frame["MASE[0.5]"].iloc[0],
            "WQL": frame["mean_weighted_sum_quantile_loss"].iloc[0]}  # fmt: skip


def test_real_quarterly_panel_backtest(pipeline):
    sm = pytest.importorskip("statsmodels.api")
    macro = sm.datasets.macrodata.load_pandas().data
    stamps = pd.PeriodIndex.from_fields(year=macro.year.astype(int), quarter=macro.quarter.astype(int)).to_timestamp()
    wide = macro[["realgdp", "realcons", "realinv", "cpi", "unemp"]].set_index(stamps).rename_axis("timestamp")
    df = wide.reset_index().melt(id_vars="timestamp", var_name="item_id", value_name="target")
    df = df[~((df.item_id == "cpi") & (df.timestamp < "1970-01-01"))]  # ragged: one item starts later
    result = backtest(pipeline, df, prediction_length=8, windows=3, stride=4, num_samples=32, seed=0, batch_size=2)
    assert set(result.seasonality.values()) == {4}  # quarterly (QS-OCT) -> 4, as gluonts
    assert len(result.metrics) == 5 * 3 and len(result.per_item) == 5
    assert result.forecasts.timestamp.dt.is_quarter_start.all()
    # Seasonal naive on smooth macro series is a strong baseline: MASE near 1 by construction.
    assert 0.2 < result.summary.at["MASE", "seasonal_naive"] < 5


# Two steps: score_items on disjoint shares of the items, finish_backtest on their concatenation.


def metrics_of_arrays(actual, quantiles, median, mean, naive, scale, axis):
    """Every metric of :mod:`toto.evaluation.metrics` on whole arrays, as backtest's columns name them."""
    repeated = np.repeat(naive[:, None], len(LEVELS), axis=1)
    return {
        "MASE": mase(actual, median, scale=scale, axis=axis),
        "WQL": wql(actual, quantiles, LEVELS, axis=axis),
        "MAE": mae(actual, median, axis=axis),
        "RMSE": rmse(actual, mean, axis=axis),
        "coverage": interval_coverage(actual, quantiles[:, 0], quantiles[:, -1], axis=axis),
        "seasonal_naive_MASE": mase(actual, naive, scale=scale, axis=axis),
        "seasonal_naive_WQL": wql(actual, repeated, LEVELS, axis=axis),
        "seasonal_naive_MAE": mae(actual, naive, axis=axis),
        "seasonal_naive_RMSE": rmse(actual, naive, axis=axis),
        "seasonal_naive_coverage": interval_coverage(actual, naive, naive, axis=axis),
    }


def test_metrics_from_totals_are_ratios_of_sums():
    """Per row, per group and overall, the metrics of summed totals are those of the whole arrays."""
    rng = np.random.default_rng(3)
    rows, horizon = 7, 12
    actual = rng.normal(10, 3, size=(rows, horizon))
    actual[0, :9] = np.nan  # rows observe 3, 12, 7, 0, ... entries: a mean of row ratios would differ
    actual[2, rng.random(horizon) < 0.4] = np.nan
    actual[3] = np.nan  # a window with no observed actual
    actual[5, 4] = np.inf
    median = actual + rng.normal(0, 2, size=(rows, horizon))
    median = np.where(np.isfinite(median), median, 10.0)
    spread = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])[:, None] * rng.uniform(0.5, 3, size=(rows, 1, 1))
    quantiles = median[:, None] + spread
    mean = median + rng.normal(0, 0.5, size=(rows, horizon))
    naive = np.round(np.where(np.isfinite(actual), actual, 10.0) + rng.normal(0, 1, size=(rows, horizon)))
    naive[6, :5] = actual[6, :5]  # exact hits: inside the baseline's point "interval"
    scale = rng.uniform(0.5, 2, size=rows)
    scale[1] = 0.0  # a flat context: MASE undefined for the whole row
    scored = _Scored(actual, quantiles, median, mean, naive, scale, list(LEVELS), (0, len(LEVELS) - 1))
    groups = np.array(["a", "b", "a", "c", "c", "a", "b"])
    totals = pd.DataFrame({"group": groups, "row": np.arange(rows), **scored.totals()})
    assert list(totals.columns[2:]) == totals_columns(LEVELS)
    assert totals.observed.tolist() == np.isfinite(actual).sum(axis=1).tolist()
    arrays = (actual, quantiles, median, mean, naive, scale)

    per_row = metrics_from_totals(totals, LEVELS, by="row")
    overall = metrics_from_totals(totals, LEVELS)
    grouped = metrics_from_totals(totals, LEVELS, by=["group"])
    assert per_row.row.tolist() == list(range(rows)) and grouped.group.tolist() == ["a", "b", "c"]
    assert list(overall.columns) == list(metrics_of_arrays(*arrays, axis=None)) and len(overall) == 1
    for name, expected in metrics_of_arrays(*arrays, axis=1).items():
        assert np.allclose(per_row[name], expected, rtol=1e-12, atol=0, equal_nan=True), name
    for name, expected in metrics_of_arrays(*arrays, axis=None).items():
        assert np.isclose(overall.at[0, name], expected, rtol=1e-12, atol=0), name
    for index, group in enumerate(["a", "b", "c"]):
        subset = [array[groups == group] for array in arrays]
        for name, expected in metrics_of_arrays(*subset, axis=None).items():
            assert np.allclose(grouped.at[index, name], expected, rtol=1e-12, atol=0, equal_nan=True), (group, name)
    assert np.isnan(per_row.at[1, "MASE"]) and np.isnan(per_row.at[3, "MAE"])
    assert not np.isclose(overall.at[0, "MAE"], np.nanmean(per_row.MAE))  # so a mean of ratios would fail


class Replay:
    """A pipeline whose forecasts are a real pipeline's, recorded per (item, cutoff) on first sight:
    the same forecasts whatever the batches, so splitting the items changes nothing but the sums' order."""

    def __init__(self, pipeline):
        self.pipeline, self.recorded = pipeline, {}

    def predict_panel(self, panel, *args, **kwargs):
        keys = [(item.item_id, item.timestamps[-1]) for item in panel.items]
        if not all(key in self.recorded for key in keys):
            self.recorded.update(zip(keys, self.pipeline.predict_panel(panel, *args, **kwargs)))
        return np.stack([self.recorded[key] for key in keys])


def flat_and_gappy_panel():
    """Five items with NaN actuals, one of them constant (MASE scale 0)."""
    flat = pd.DataFrame({"item_id": "flat", "timestamp": pd.date_range("2024-01-02", periods=80, freq="h"),
                         "target": 3.0})  # fmt: skip
    return pd.concat([panel([150, 200, 120, 90], missing=0.1), flat], ignore_index=True)


def assert_frames_close(left, right):
    pd.testing.assert_frame_equal(left.reset_index(drop=True), right.reset_index(drop=True), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shares", [(["s0", "s1"], ["s2", "s3", "flat"]), (["s3", "flat", "s0"], ["s2"], ["s1"])],
                         ids=["two-in-order", "three-shuffled"])  # fmt: skip
def test_split_items_finish_like_the_whole(pipeline, shares):
    df = flat_and_gappy_panel()
    replay = Replay(pipeline)
    options = dict(prediction_length=20, windows=3, stride=10, quantile_levels=LEVELS, num_samples=32, seed=0)
    whole = backtest(replay, df, **options)
    frame = FrameOptions(prediction_length=20, quantile_levels=LEVELS, num_samples=32, seed=0)
    parts = [score_items(replay, df[df.item_id.isin(share)], frame, BacktestOptions(windows=3, stride=10))
             for share in shares]  # fmt: skip
    split = finish_backtest(parts)

    totals = pd.concat([part.totals for part in parts], ignore_index=True)
    assert list(totals.columns) == KEYS + totals_columns(LEVELS)
    assert (totals.observed < 20).any() and (totals.observed > 0).all()  # NaN actuals in some windows
    assert (totals.toto_mase_count[totals.item_id == "flat"] == 0).all()  # scale 0: MASE left out
    assert whole.metrics[whole.metrics.item_id == "flat"].MASE.isna().all()
    baseline = [f"seasonal_naive_{name}" for name in METRIC_COLUMNS]
    assert list(whole.metrics.columns) == KEYS + METRIC_COLUMNS + baseline  # no totals
    assert split.seasonality == whole.seasonality and split.interval == whole.interval == (0.1, 0.9)
    assert_frames_close(split.summary, whole.summary)
    pd.testing.assert_index_equal(split.summary.index, whole.summary.index)
    assert_frames_close(split.per_window, whole.per_window)
    # Parts order items as they are given; the whole frame, by first appearance.
    order = pd.MultiIndex.from_frame(whole.per_item[["item_id", "target_name"]])
    per_item = split.per_item.set_index(["item_id", "target_name"]).loc[order].reset_index()
    assert_frames_close(per_item, whole.per_item)
    rows = pd.MultiIndex.from_frame(whole.metrics[KEYS])
    assert_frames_close(split.metrics.set_index(KEYS).loc[rows].reset_index(), whole.metrics)
    forecasts = split.forecasts.set_index(["item_id", "timestamp", "window"]).loc[
        pd.MultiIndex.from_frame(whole.forecasts[["item_id", "timestamp", "window"]])
    ]
    assert_frames_close(forecasts.reset_index()[whole.forecasts.columns], whole.forecasts)

    # A driver holding only the concatenated frames and the merged seasonality gets the same.
    merged = BacktestParts(pd.concat([part.forecasts for part in parts], ignore_index=True), totals,
                           split.seasonality, list(LEVELS), (0.1, 0.9))  # fmt: skip
    driver = finish_backtest(merged)
    for name in ("forecasts", "metrics", "per_item", "per_window", "summary"):
        pd.testing.assert_frame_equal(getattr(driver, name), getattr(split, name))


def test_finish_backtest_rejects_parts_that_do_not_add_up(pipeline):
    df = panel([60, 70])
    part, other = (score_items(pipeline, df[df.item_id == item], FrameOptions(prediction_length=12, num_samples=4))
                   for item in ("s0", "s1"))  # fmt: skip
    with pytest.raises(ValueError, match="disjoint items"):
        finish_backtest([part, part])
    with pytest.raises(ValueError, match="same quantile_levels and interval"):
        finish_backtest([part, replace(other, interval=(0.2, 0.8))])
    with pytest.raises(ValueError, match="at least one"):
        finish_backtest([])
    result = finish_backtest([part, other])
    assert result.seasonality == {"s0": 24, "s1": 24} and result.per_item.item_id.tolist() == ["s0", "s1"]
