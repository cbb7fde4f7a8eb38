"""toto.evaluation.backtest: windows as GluonTS cuts them, metrics as GluonTS computes them, on real data too."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from toto import TotoPipeline  # noqa: E402
from toto.evaluation import backtest, seasonality_of  # noqa: E402

LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
RTOL = 1e-6


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
