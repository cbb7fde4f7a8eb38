"""toto.evaluation.metrics against gluonts.ev, computed by gluonts' own evaluation path on the same forecasts."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest

from toto.evaluation import (
    coverage,
    interval_coverage,
    mae,
    mase,
    rmse,
    seasonal_error,
    seasonal_naive,
    wql,
)

# Our metrics must compute quietly (gluonts' own warnings are silenced where gluonts runs).
pytestmark = [
    pytest.mark.filterwarnings("error::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Using `json`-module:UserWarning"),
]

LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)
MEDIAN = LEVELS.index(0.5)
HORIZON = 10
RTOL = 1e-6


@dataclass(frozen=True)
class Case:
    past: np.ndarray  # [series, T]
    actual: np.ndarray  # [series, HORIZON]
    quantiles: np.ndarray  # [series, len(LEVELS), HORIZON]
    mean: np.ndarray  # [series, HORIZON], deliberately not the median
    season: int

    @property
    def median(self) -> np.ndarray:
        return self.quantiles[:, MEDIAN]


def make_case(seed: int, past_length: int, season: int, counts: bool = False, n_series: int = 12) -> Case:
    """Seasonal random walks of scales 1e-2..1e3 with ~10% NaN in past and actual, and quantile forecasts.

    ``counts`` rounds everything to integers (scales 3..100), so forecasts tie with actuals.
    """
    rng = np.random.default_rng(seed)
    scale = 10.0 ** (rng.uniform(0.5, 2, size=(n_series, 1)) if counts else rng.uniform(-2, 3, size=(n_series, 1)))
    t = np.arange(past_length + HORIZON)
    wave = np.sin(2 * np.pi * t / 7 + rng.uniform(0, 2 * np.pi, size=(n_series, 1)))
    series = scale * (2 + wave + 0.3 * rng.standard_normal((n_series, t.size)).cumsum(axis=1))
    spread = np.sort(rng.standard_normal((n_series, len(LEVELS), HORIZON)), axis=1)
    quantiles = series[:, None, past_length:] + 0.5 * scale[:, :, None] * spread
    mean = quantiles[:, MEDIAN] + 0.2 * scale * rng.standard_normal((n_series, HORIZON))
    if counts:
        series, quantiles, mean = np.round(series), np.round(quantiles), np.round(mean)
    series[rng.random(series.shape) < 0.1] = np.nan
    past, actual = series[:, :past_length].copy(), series[:, past_length:].copy()
    if past_length > 2:
        past[0] = 3.0  # constant: seasonal error 0, so MASE leaves the series out
        past[1, :-1] = np.nan  # a single observation: no pair, seasonal error 0 as well
        past[2, -2], actual[2, 1] = -np.inf, np.inf  # infinities are missing values too
    return Case(past, actual, quantiles, mean, season)


CASES = {
    "long": (0, 40, 7),  # T > season, NaN in past and actual
    "shorter_than_season": (1, 5, 7),  # season falls back to 1
    "equal_to_season": (2, 7, 7),  # no fallback and no pair: every scale is 0
    "season_one": (3, 3, 1),
    "counts": (4, 30, 7, True),  # ties between actuals and quantiles
}


@cache
def case(name: str) -> Case:
    return make_case(*CASES[name])


def ours(c: Case, axis: int | None) -> dict[str, float | np.ndarray]:
    return {
        "MAE[0.5]": mae(c.actual, c.median, axis=axis),
        "RMSE[mean]": rmse(c.actual, c.mean, axis=axis),
        "MASE[0.5]": mase(c.actual, c.median, c.past, c.season, axis=axis),
        "mean_weighted_sum_quantile_loss": wql(c.actual, c.quantiles, LEVELS, axis=axis),
        "coverage[0.1]": coverage(c.actual, c.quantiles[:, 0], axis=axis),
        "coverage[0.9]": coverage(c.actual, c.quantiles[:, -1], axis=axis),
    }


def evaluate_with_gluonts(c: Case, axis: int | None) -> dict[str, np.ndarray]:
    """``gluonts.model.evaluate_forecasts`` on the case, with its default metric point forecasts."""
    pytest.importorskip("gluonts")
    import pandas as pd
    from gluonts.dataset.split import split
    from gluonts.ev.metrics import MAE, MASE, RMSE, Coverage, MeanWeightedSumQuantileLoss
    from gluonts.model import QuantileForecast, evaluate_forecasts

    horizon = c.actual.shape[-1]
    start = pd.Period("2024-01-01", freq="h")
    dataset = [
        {"start": start, "target": np.concatenate([p, a]), "item_id": str(i)}
        for i, (p, a) in enumerate(zip(c.past, c.actual))
    ]
    _, template = split(dataset, offset=-horizon)
    test_data = template.generate_instances(prediction_length=horizon, windows=1)
    keys = [*map(str, LEVELS), "mean"]
    forecasts = [
        QuantileForecast(np.vstack([q, m]), start_date=label["start"], forecast_keys=keys, item_id=label["item_id"])
        for label, q, m in zip(test_data.label, c.quantiles, c.mean)
    ]
    metrics = [MAE(), RMSE(), MASE(), MeanWeightedSumQuantileLoss(LEVELS), Coverage(0.1), Coverage(0.9)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = evaluate_forecasts(forecasts, test_data=test_data, metrics=metrics, axis=axis, seasonality=c.season)
    return {column: frame[column].to_numpy() for column in frame.columns}


@cache
def gluonts_metrics(name: str, axis: int | None) -> dict[str, np.ndarray]:
    return evaluate_with_gluonts(case(name), axis)


def gluonts_seasonal_error(past: np.ndarray, season: int) -> np.ndarray:
    """The scale ``evaluate_forecasts`` feeds its metrics: masked input, then a plain array (dropping the mask)."""
    pytest.importorskip("gluonts")
    from gluonts.ev.ts_stats import seasonal_error as gluonts_error

    return np.array([gluonts_error(np.ma.masked_invalid(p), seasonality=season, time_axis=-1) for p in past]).ravel()


def close(a, b) -> bool:
    return np.allclose(np.ravel(a), np.ravel(b), rtol=RTOL, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_metrics_match_gluonts(name, axis):
    theirs = gluonts_metrics(name, axis)
    for metric, value in ours(case(name), axis).items():
        np.testing.assert_allclose(np.ravel(value), theirs[metric], rtol=RTOL, atol=0, err_msg=metric)


@pytest.mark.parametrize("name", CASES)
def test_seasonal_error_matches_gluonts(name):
    c = case(name)
    np.testing.assert_allclose(seasonal_error(c.past, c.season), gluonts_seasonal_error(c.past, c.season), rtol=RTOL)


def test_cases_exercise_the_edges():
    """The comparisons above cover NaN, zero scales and both sides of the season fallback."""
    long = case("long")
    assert np.isnan(long.past[2:]).any() and np.isnan(long.actual).any() and np.isinf(long.actual).any()
    assert (seasonal_error(long.past, 7)[:2] == 0).all() and (seasonal_error(long.past, 7)[2:] > 0).all()
    assert (seasonal_error(case("equal_to_season").past, 7) == 0).all()
    assert np.isnan(mase(long.actual, long.median, long.past, 7, axis=1)[:2]).all()
    assert (seasonal_error(case("shorter_than_season").past, 7)[2:] > 0).all()
    counts = case("counts")
    assert (counts.actual == counts.quantiles[:, 0]).any() and (counts.actual == counts.quantiles[:, -1]).any()


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_interval_coverage_is_a_difference_of_gluonts_coverages(axis):
    c = case("long")
    theirs = gluonts_metrics("long", axis)
    inside = interval_coverage(c.actual, c.quantiles[:, 0], c.quantiles[:, -1], axis=axis)
    np.testing.assert_allclose(np.ravel(inside), theirs["coverage[0.9]"] - theirs["coverage[0.1]"], rtol=RTOL)


def test_interval_is_closed():
    actual = np.array([[0.0, 1.0, 2.0, 3.0]])
    lower, upper = np.zeros((1, 4)), np.full((1, 4), 2.0)
    assert interval_coverage(actual, lower, upper) == 0.75
    assert coverage(actual, upper) - coverage(actual, lower) + np.mean(actual == lower) == 0.75


def alternatives(c: Case) -> dict[str, float | np.ndarray]:
    """Plausible but different definitions, which must not pass for gluonts'."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "mean_weighted_sum_quantile_loss": np.nanmean(wql(c.actual, c.quantiles, LEVELS, axis=1)),
            "RMSE[mean]": np.nanmean(rmse(c.actual, c.mean, axis=1)),
            "MASE[0.5]": np.nanmean(mase(c.actual, c.median, c.past, c.season, axis=1)),
            "MAE[0.5]": mae(c.actual, c.mean),  # gluonts' MAE takes the median
        }


@pytest.mark.parametrize("metric", ["mean_weighted_sum_quantile_loss", "RMSE[mean]", "MASE[0.5]", "MAE[0.5]"])
def test_other_definitions_do_not_match_gluonts(metric):
    assert not close(alternatives(case("long"))[metric], gluonts_metrics("long", None)[metric])


def test_rmse_point_matters():
    """gluonts' RMSE takes the mean: the median must not pass for it."""
    c = case("long")
    assert not close(rmse(c.actual, c.median, axis=1), gluonts_metrics("long", 1)["RMSE[mean]"])


def test_other_seasonal_errors_do_not_match_gluonts():
    equal = case("equal_to_season")  # falling back already when T == season would give a positive scale
    assert not close(seasonal_error(equal.past, 1), gluonts_seasonal_error(equal.past, 7))
    long = case("long")  # NaN must drop pairs, not poison the mean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unmasked = np.abs(long.past[:, 7:] - long.past[:, :-7]).mean(axis=-1)
    assert not close(unmasked, gluonts_seasonal_error(long.past, 7))


@pytest.mark.parametrize("axis", [None, 1])
def test_mase_leaves_out_what_gluonts_masked_division_drops(axis):
    """A scale that vanishes next to the error (or an overflowing quotient) drops the entry, as numpy.ma does."""
    actual = np.array([[1e300, 1.0, 2.0], [1e300, 1.0, 2.0]])
    past = np.array([[0.0, 1e-8, 0.0, 1e-8], [0.0, 1e-300, 0.0, 1e-300]])
    quantiles = np.zeros((2, len(LEVELS), 3))
    c = Case(past, actual, quantiles, np.zeros((2, 3)), season=1)
    theirs = evaluate_with_gluonts(c, axis)["MASE[0.5]"]
    np.testing.assert_allclose(np.ravel(mase(actual, c.median, past, 1, axis=axis)), theirs, rtol=RTOL)


def test_per_series_wql_with_zero_actuals_is_inf_not_gluonts_unweighted_loss():
    """Deliberate divergence: per series, gluonts' masked division reports the loss left undivided."""
    actual = np.zeros((2, HORIZON))
    quantiles = np.ones((2, len(LEVELS), HORIZON))
    c = Case(np.ones((2, 8)), actual, quantiles, np.ones((2, HORIZON)), season=1)
    undivided = 2 * HORIZON * (1 - np.mean(LEVELS))  # mean over levels of the summed 2 * pinball loss
    np.testing.assert_allclose(evaluate_with_gluonts(c, 1)["mean_weighted_sum_quantile_loss"], undivided)
    assert np.isinf(wql(actual, quantiles, LEVELS, axis=1)).all()
    assert np.isinf(evaluate_with_gluonts(c, None)["mean_weighted_sum_quantile_loss"]).all()
    assert np.isinf(wql(actual, quantiles, LEVELS))
    assert np.isnan(wql(actual, np.zeros_like(quantiles), LEVELS, axis=1)).all()


def test_leading_dimensions_flatten_to_series():
    c = case("long")
    actual, median, past = (a.reshape(3, 4, -1) for a in (c.actual, c.median, c.past))
    quantiles = c.quantiles.reshape(3, 4, len(LEVELS), HORIZON)
    per_series = mase(actual, median, past, 7, axis=1)
    assert per_series.shape == (3, 4)
    np.testing.assert_array_equal(per_series.ravel(), mase(c.actual, c.median, c.past, 7, axis=1))
    assert wql(actual, quantiles, LEVELS) == wql(c.actual, c.quantiles, LEVELS)
    assert mae(actual, median, axis=0).shape == (HORIZON,)
    assert seasonal_error(past, 7).shape == (3, 4)
    assert np.shape(mae(c.actual[3], c.median[3], axis=1)) == ()
    assert isinstance(rmse(c.actual[3], c.mean[3]), float)


def test_seasonal_naive_repeats_the_last_season():
    past = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 30.0, 40.0, 50.0]])
    np.testing.assert_array_equal(seasonal_naive(past, 5, 2), [[4, 5, 4, 5, 4], [40, 50, 40, 50, 40]])
    np.testing.assert_array_equal(seasonal_naive(past, 3, 5), past[:, :3])  # T == season: no fallback


def test_seasonal_naive_falls_back_to_the_last_value_when_shorter_than_the_season():
    np.testing.assert_array_equal(seasonal_naive([1.0, 2.0, 3.0], 4, 7), [3, 3, 3, 3])
    np.testing.assert_array_equal(seasonal_naive([1.0, 2.0, np.nan], 2, 7), [2, 2])


def test_seasonal_naive_fills_missing_values():
    np.testing.assert_array_equal(seasonal_naive([1.0, 2.0, 3.0, np.nan, 5.0], 4, 2), [3, 5, 3, 5])
    np.testing.assert_array_equal(seasonal_naive([np.nan, np.nan, 3.0, 4.0], 2, 4), [3, 3])
    assert np.isnan(seasonal_naive([[np.nan, np.inf]], 3, 1)).all()


def test_seasonal_naive_matches_gluonts_predictor_when_past_covers_a_season():
    pytest.importorskip("gluonts")
    import pandas as pd
    from gluonts.model.seasonal_naive import SeasonalNaivePredictor

    c = case("long")
    predictor = SeasonalNaivePredictor(prediction_length=HORIZON, season_length=7)
    start = pd.Period("2024-01-01", freq="h")
    past = np.where(np.isfinite(c.past), c.past, np.nan)  # gluonts imputes NaN only; we take any non-finite as missing
    theirs = np.stack([predictor.predict_item({"start": start, "target": p}).samples[0] for p in past])
    np.testing.assert_allclose(seasonal_naive(c.past, HORIZON, 7), theirs, rtol=RTOL)


ACTUAL = np.ones((2, 3))
QUANTILES = np.ones((2, 2, 3))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: mae(ACTUAL, np.ones((2, 4))), "point"),
        (lambda: rmse(ACTUAL, np.ones((3, 2))), "point"),
        (lambda: mae(ACTUAL, np.full((2, 3), np.nan)), "point"),
        (lambda: mase(ACTUAL, ACTUAL, np.ones((3, 8)), 2), "past"),
        (lambda: mase(ACTUAL, ACTUAL, np.ones((2, 8)), 0), "season_length"),
        (lambda: seasonal_error(np.ones(8), 0), "season_length"),
        (lambda: seasonal_error(np.ones(8), 1.5), "season_length"),
        (lambda: seasonal_naive(np.ones(8), 3, 0), "season_length"),
        (lambda: seasonal_naive(np.ones(8), 0, 2), "prediction_length"),
        (lambda: seasonal_naive(np.ones((2, 0)), 3, 2), "past"),
        (lambda: wql(ACTUAL, QUANTILES, [0.0, 0.5]), "levels"),
        (lambda: wql(ACTUAL, QUANTILES, [0.5, 1.0]), "levels"),
        (lambda: wql(ACTUAL, QUANTILES, [-0.1, 0.5]), "levels"),
        (lambda: wql(ACTUAL, QUANTILES, [0.5, 0.5]), "levels"),
        (lambda: wql(ACTUAL, QUANTILES, [0.1, 0.5, 0.9]), "quantiles"),
        (lambda: wql(ACTUAL, np.ones((2, 3)), [0.5]), "quantiles"),
        (lambda: wql(ACTUAL, np.where(QUANTILES > 0, np.inf, 0), [0.1, 0.9]), "quantiles"),
        (lambda: wql(ACTUAL, np.full((2, 2, 3), np.nan), [0.1, 0.9]), "quantiles"),
        (lambda: coverage(ACTUAL, np.ones(3)), "quantile"),
        (lambda: interval_coverage(ACTUAL, ACTUAL, np.ones((2, 2))), "upper"),
        (lambda: interval_coverage(ACTUAL, ACTUAL + 1, ACTUAL), "lower"),
        (lambda: mae(ACTUAL, ACTUAL, axis=2), "axis"),
        (lambda: mae(1.0, 1.0), "actual"),
        (lambda: mae(np.ones((2, 0)), np.ones((2, 0))), "actual"),
    ],
)
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        call()
