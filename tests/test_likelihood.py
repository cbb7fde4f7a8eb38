"""Exact per-step log-likelihoods and anomaly scores (Toto 1.0), against the oracle and our own forecasts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from checkpoints import TINY_TOTO2_CONFIG, write_random_toto2
from parity_inputs import SCENARIOS, scenario
from test_parity import padded, rel

from toto.data.util.dataset import fill_missing
from toto.inference.likelihood import EPS, mixture_cdf, step_predictions
from toto.pipeline import TotoPipeline


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


def oracle_log_density(theirs, series, observed, patch):
    """Upstream's training-step arithmetic (``_train_or_val_step``) per element, minus log(scale + eps)."""
    ids = torch.zeros_like(series, dtype=torch.int)
    out = theirs(series[..., :-patch], observed[..., :-patch], ids[..., :-patch])
    scale = out.scale + EPS
    scaled = (series[..., patch:] - out.loc) / scale
    return out.distribution.log_prob(scaled) - torch.log(scale)


@pytest.mark.parametrize("name", [s for s in SCENARIOS if s != "multivariate_groups"])
@torch.no_grad()
def test_log_density_matches_upstreams_training_step(model_pair, name, record):
    ours, theirs = model_pair
    patch = ours.patch_size
    series, observed, _ = scenario(name, patch)
    series = torch.where(observed, series, torch.nan)
    filled, missing = fill_missing(series)
    ours_density = step_predictions(ours, filled, ~missing).log_density()
    # The oracle gets the same whole-patch padding and filled values; its first patch is unscored.
    values, mask, _ = padded(filled, ~missing, torch.zeros_like(filled, dtype=torch.int), patch)
    theirs_density = oracle_log_density(theirs, values, mask, patch)
    left = values.shape[-1] - series.shape[-1]
    expected = torch.cat((torch.full_like(values[..., :patch], math.nan), theirs_density), dim=-1)[..., left:]
    expected = torch.where(missing, torch.nan, expected)
    expected[..., : patch - left] = math.nan
    assert torch.equal(ours_density.isnan(), expected.isnan())
    scored = ~expected.isnan()
    assert scored.any()
    assert record("log_density", rel(ours_density[scored], expected[scored])) <= 1e-4


def test_the_last_patch_is_scored_under_the_forecasts_distribution(pipeline):
    """Teacher-forced and forecast agree: the predicted mean of the last patch is the mean
    forecast from the context before it (the global clamp does not bind on this series)."""
    patch = pipeline.family.patch_size
    rng = np.random.default_rng(0)
    series = (10 + np.sin(np.arange(5 * patch) / 5) + rng.normal(0, 0.3, 5 * patch)).astype(np.float32)
    values = torch.from_numpy(series)[None, None]
    predictions = step_predictions(pipeline.family.model.model, values, torch.ones_like(values, dtype=torch.bool))
    predicted_mean = predictions.mixture.mean * predictions.scale + predictions.loc
    forecaster = pipeline.family.forecaster
    from toto.data.util.dataset import masked_timeseries

    forecast = forecaster.forecast(masked_timeseries(values[..., :-patch]), patch).mean
    assert rel(predicted_mean[..., -patch:], forecast) <= 1e-5


def test_log_likelihood_marks_what_it_cannot_score(pipeline):
    patch = pipeline.family.patch_size
    series = 5 + np.sin(np.arange(3 * patch + 5) / 4)
    series[2 * patch] = np.nan
    (density,) = pipeline.log_likelihood(series)
    assert density.shape == (1, series.size) and density.dtype == np.float32
    unscored = np.isnan(density[0])
    first = series.size - 3 * patch  # the first (left-padded) patch holds this many real steps
    assert unscored[:first].all() and unscored[2 * patch] and not unscored[first:2 * patch].any()
    assert np.isfinite(density[0, ~unscored]).all()


def test_series_of_different_lengths_are_scored_alone_and_batching_changes_nothing(pipeline):
    patch = pipeline.family.patch_size
    rng = np.random.default_rng(1)
    items = [rng.normal(3, 1, n).astype(np.float32) for n in (2 * patch, 3 * patch + 7, 2 * patch)]
    together = pipeline.log_likelihood(items)
    one_at_a_time = pipeline.log_likelihood(items, batch_size=1)
    for item, a, b in zip(items, together, one_at_a_time):
        (alone,) = pipeline.log_likelihood(item)
        np.testing.assert_allclose(a, alone, rtol=1e-5, equal_nan=True)
        np.testing.assert_allclose(b, alone, rtol=1e-5, equal_nan=True)
    stacked = pipeline.log_likelihood(np.stack([items[0], items[2]]))
    assert len(stacked) == 2 and stacked[0].shape == (1, 2 * patch)


def test_mixture_cdf_integrates_the_density():
    torch.manual_seed(0)
    shape = (2, 3, 4)
    from toto.model.distribution import MixtureOfStudentT

    mixture = MixtureOfStudentT(2 + torch.rand(*shape) * 5, torch.randn(*shape), 0.5 + torch.rand(*shape),
                                torch.randn(*shape))  # fmt: skip
    grid = torch.linspace(-400, 3, 400_001, dtype=torch.float64)
    density = mixture.log_prob(grid[:, None, None].float().expand(-1, 2, 3)).double().exp()
    integral = torch.trapezoid(density, grid, dim=0)
    cdf = mixture_cdf(mixture, torch.full((2, 3), 3.0))
    # Below -400 the heaviest tail (df >= 2) still holds up to about 1e-5 of the mass.
    torch.testing.assert_close(cdf, integral, atol=3e-5, rtol=0)


def test_anomalies_are_flagged_at_the_false_alarm_rate(pipeline):
    patch = pipeline.family.patch_size
    rng = np.random.default_rng(2)
    series = (10 + np.sin(np.arange(6 * patch) / 3) + rng.normal(0, 0.1, 6 * patch)).astype(np.float32)
    series[4 * patch + 3] += 1000.0
    (scores,) = pipeline.detect_anomalies(series, false_alarm_rate=0.01)
    assert scores.anomaly[0, 4 * patch + 3] and scores.tail_probability[0, 4 * patch + 3] < 1e-6
    assert scores.nll[0, 4 * patch + 3] == np.nanmax(scores.nll)
    assert not scores.anomaly[0, :patch].any() and np.isnan(scores.tail_probability[0, :patch]).all()
    finite = scores.tail_probability[~np.isnan(scores.tail_probability)]
    assert ((finite >= 0) & (finite <= 1)).all()
    (density,) = pipeline.log_likelihood(series)
    np.testing.assert_array_equal(scores.nll, -density)


def test_bad_input_and_quantile_models(pipeline, tmp_path):
    with pytest.raises(ValueError, match="false_alarm_rate"):
        pipeline.detect_anomalies(np.ones(100), false_alarm_rate=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.log_likelihood(np.ones(100), batch_size=0)
    with pytest.raises(ValueError, match="±inf"):
        pipeline.log_likelihood(np.array([1.0, np.inf, 2.0]))
    toto2 = TotoPipeline.from_pretrained(str(write_random_toto2(tmp_path, TINY_TOTO2_CONFIG)), device_map="cpu")
    with pytest.raises(ValueError, match="Toto 2.0 forecasts quantiles; it has no density"):
        toto2.log_likelihood(np.ones(100))


def test_knot_cdf_passes_through_the_knots_with_exponential_tails():
    from toto.inference.quantile_scores import knot_cdf

    levels = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    knots = torch.tensor([[-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0]], dtype=torch.float64)
    at_knots = knot_cdf(knots.expand(9, -1), levels, knots[0])
    torch.testing.assert_close(at_knots, torch.tensor(levels, dtype=torch.float64))
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    cdf = knot_cdf(knots.expand(x.numel(), -1), levels, x)
    assert (cdf.diff() >= 0).all() and cdf[0] < 1e-4 and cdf[-1] > 1 - 1e-4
    # Beyond 0.9: the tail halves over each gap of (q0.9 - q0.8) = 1.
    upper = knot_cdf(knots.expand(2, -1), levels, torch.tensor([4.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(1 - upper, torch.tensor([0.05, 0.025], dtype=torch.float64))
    lower = knot_cdf(knots, levels, torch.tensor([-6.0], dtype=torch.float64))  # (q0.2 - q0.1) = 2
    torch.testing.assert_close(lower, torch.tensor([0.05], dtype=torch.float64))


def test_toto2_scores_come_from_the_knots_its_forecast_gives(tmp_path):
    """Teacher-forced knots of the patch after a context equal the first patch of a forecast
    from that context; the anomaly scores read them (nll NaN: no density)."""
    from toto.inference.quantile_scores import quantile_step_predictions

    toto2 = TotoPipeline.from_pretrained(str(write_random_toto2(tmp_path, TINY_TOTO2_CONFIG)), device_map="cpu",
                                         torch_compile=False)  # fmt: skip
    patch = toto2.family.patch_size
    rng = np.random.default_rng(4)
    series = (5 + np.sin(np.arange(6 * patch) / 3) + rng.normal(0, 0.2, 6 * patch)).astype(np.float32)
    values = torch.from_numpy(series)[None, None]
    predictions = quantile_step_predictions(toto2.family.model, values, torch.ones_like(values, dtype=torch.bool))
    (forecast,) = toto2.predict(series[: 5 * patch], patch)
    assert rel(predictions.knots[0, 0, -patch:], torch.from_numpy(forecast.quantiles[0, 0])) <= 1e-5
    series[5 * patch + 2] += 100.0
    (scores,) = toto2.detect_anomalies(series, false_alarm_rate=0.01)
    tail = scores.tail_probability[0]
    assert np.isnan(scores.nll).all() and scores.anomaly[0, 5 * patch + 2]
    assert tail[5 * patch + 2] == np.nanmin(tail) < 1e-10  # a random model's knots are narrow: others flag too


def test_detect_anomalies_df_scores_each_item_as_detect_anomalies(pipeline):
    pd = pytest.importorskip("pandas")
    patch = pipeline.family.patch_size
    rng = np.random.default_rng(3)
    values = {"a": rng.normal(5, 1, (2, 3 * patch)), "b": rng.normal(0, 1, (2, 2 * patch + 9))}
    values["b"][:, 20] = np.nan  # the row is dropped below: both targets missing there
    frame = pd.concat([
        pd.DataFrame({"item_id": item, "timestamp": pd.date_range("2026-01-01", periods=v.shape[1], freq="h"),
                      "load": v[0], "errors": v[1]})
        for item, v in values.items()
    ]).sample(frac=1.0, random_state=0)  # fmt: skip
    frame = frame[~frame["errors"].isna()]  # a missing row is a missing value too
    out = pipeline.detect_anomalies_df(frame, target=["load", "errors"], false_alarm_rate=0.05)
    assert list(out.columns) == ["item_id", "timestamp", "target_name", "value", "nll", "tail_probability", "anomaly"]
    expected = pipeline.detect_anomalies([v.astype(np.float32) for v in values.values()], false_alarm_rate=0.05)
    for (item, v), scores in zip(values.items(), expected):
        for index, name in enumerate(["load", "errors"]):
            rows = out[(out["item_id"] == item) & (out["target_name"] == name)]
            assert rows["timestamp"].is_monotonic_increasing and len(rows) == v.shape[1]
            np.testing.assert_array_equal(rows["value"].to_numpy(), v[index])
            np.testing.assert_allclose(rows["nll"].to_numpy(), scores.nll[index], rtol=1e-5, equal_nan=True)
            np.testing.assert_array_equal(rows["anomaly"].to_numpy(), scores.anomaly[index])
    assert np.isnan(out[(out["item_id"] == "b") & (out["target_name"] == "errors")]["nll"].to_numpy()[20])


def test_missing_scipy_names_the_extra(pipeline, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "scipy.special", None)
    with pytest.raises(ImportError, match=r"toto-compiled\[monitoring\]"):
        pipeline.detect_anomalies(np.arange(100.0))
    assert pipeline.log_likelihood(np.arange(100.0))[0].shape == (1, 100)  # the density needs no scipy
