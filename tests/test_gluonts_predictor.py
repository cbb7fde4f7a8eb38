"""The GluonTS predictor: parity with upstream's on the same checkpoint, upstream's own checks, and bad input.

gluonts is an optional extra: the tests that need it skip without it; the
import-isolation tests run in fresh subprocesses.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from oracle import import_oracle

from toto import Toto, TotoForecaster

EXTRA_HINT = 'pip install "toto-compiled[gluonts]"'
PREDICTION_LENGTH = 20
CONTEXT_LENGTH = 48


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


# --- gluonts stays optional -------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["gluonts", "pandas"])
def test_import_without_the_extra_names_it(missing):
    result = run_python(
        f"""
        import sys
        sys.modules[{missing!r}] = None  # what an absent package looks like to import
        try:
            import toto.inference.gluonts_predictor
        except ImportError as err:
            print(err)
        else:
            raise SystemExit("imported without {missing}")
        """
    )
    assert result.returncode == 0, result.stderr
    assert EXTRA_HINT in result.stdout


@pytest.mark.parametrize("module", ["toto", "toto.inference.forecaster", "toto.inference"])
def test_core_package_does_not_import_gluonts(module):
    result = run_python(
        f"""
        import sys
        import {module}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "gluonts" or m.endswith("gluonts_predictor"))
        print(loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- shared fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gp():
    pytest.importorskip("gluonts")
    from toto.inference import gluonts_predictor

    return gluonts_predictor


@pytest.fixture(scope="module")
def ours(tiny_checkpoint) -> Toto:
    return Toto.load_from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def theirs(tiny_checkpoint):
    pytest.importorskip("gluonts")
    return import_oracle("model.toto").Toto.load_from_checkpoint(str(tiny_checkpoint)).eval()


@pytest.fixture
def upstream_predictor_module(monkeypatch):
    """Upstream's predictor module, driving upstream's forecaster.

    It imports ``toto.*`` absolutely, which here is this package; point those two
    names back at the oracle so the comparison is upstream against us.
    """
    pytest.importorskip("gluonts")
    module = import_oracle("inference.gluonts_predictor")
    monkeypatch.setattr(module, "TotoForecaster", import_oracle("inference.forecaster").TotoForecaster)
    monkeypatch.setattr(module, "MaskedTimeseries", import_oracle("data.util.dataset").MaskedTimeseries)
    return module


def list_dataset(entries, one_dim_target=False):
    from gluonts.dataset.common import ListDataset

    return ListDataset(entries, freq="h", one_dim_target=one_dim_target)


@pytest.fixture
def mixed_dataset():
    """Univariate and multivariate items of different lengths (one shorter than the context), starts and ids."""
    rng = np.random.default_rng(0)
    return list_dataset(
        [
            {"target": rng.normal(size=(1, 70)), "start": "2021-01-01", "item_id": "a"},
            {"target": 5 + rng.normal(size=(3, 50)), "start": "2021-03-01 05:00", "item_id": "b"},
            {"target": 100 * rng.normal(size=(1, 20)), "start": "2022-06-01", "item_id": "c"},
            {"target": rng.normal(size=(1, 90)).cumsum(axis=1), "start": "2020-12-31 23:00", "item_id": "d"},
        ]
    )


@pytest.fixture
def uniform_dataset():
    """Same-shaped multivariate items, so several share one forecast call."""
    rng = np.random.default_rng(1)
    return list_dataset(
        [{"target": rng.normal(size=(2, 60 + 7 * i)), "start": f"2021-0{i + 1}-01", "item_id": f"u{i}"} for i in range(3)]
    )


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def assert_same_fields(a, b):
    assert type(a).__name__ == type(b).__name__ == "TotoSampleForecast"
    assert a.start_date == b.start_date
    assert a.item_id == b.item_id
    assert a.samples.shape == b.samples.shape
    assert a.mean.shape == b.mean.shape


# --- parity with upstream -----------------------------------------------------------------------


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_mean_forecasts_match_upstream(gp, ours, theirs, upstream_predictor_module, mixed_dataset, use_kv_cache, record):
    mine = gp.TotoPredictor.create_for_eval(ours, PREDICTION_LENGTH, CONTEXT_LENGTH)
    oracle = upstream_predictor_module.TotoPredictor.create_for_eval(theirs, PREDICTION_LENGTH, CONTEXT_LENGTH)
    a = list(mine.predict(mixed_dataset, use_kv_cache=use_kv_cache))
    b = list(oracle.predict(mixed_dataset))
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert_same_fields(x, y)
        assert record(f"mean {x.item_id}", rel(x.mean, y.mean)) <= 1e-4
        assert rel(x.samples, y.samples) <= 1e-4  # without num_samples the mean path is the only sample


def test_batched_mean_forecasts_match_upstream(gp, ours, theirs, upstream_predictor_module, uniform_dataset, record):
    mode = gp.Multivariate(batch_size=2)
    mine = gp.TotoPredictor.create_for_eval(ours, PREDICTION_LENGTH, CONTEXT_LENGTH, mode=mode)
    up_mode = upstream_predictor_module.Multivariate(batch_size=2)
    oracle = upstream_predictor_module.TotoPredictor.create_for_eval(theirs, PREDICTION_LENGTH, CONTEXT_LENGTH, mode=up_mode)
    a, b = list(mine.predict(uniform_dataset)), list(oracle.predict(uniform_dataset))
    assert [x.item_id for x in a] == ["u0", "u1", "u2"]
    for x, y in zip(a, b):
        assert_same_fields(x, y)
        assert x.samples.shape == (1, PREDICTION_LENGTH, 2)
        assert record(f"mean {x.item_id}", rel(x.mean, y.mean)) <= 1e-4


def test_sample_forecast_fields_match_upstream(gp, ours, theirs, upstream_predictor_module, mixed_dataset):
    mine = gp.TotoPredictor.create_for_eval(ours, PREDICTION_LENGTH, CONTEXT_LENGTH, samples_per_batch=3)
    oracle = upstream_predictor_module.TotoPredictor.create_for_eval(
        theirs, PREDICTION_LENGTH, CONTEXT_LENGTH, samples_per_batch=3
    )
    a = list(mine.predict(mixed_dataset, num_samples=6))
    b = list(oracle.predict(mixed_dataset, num_samples=6))  # upstream needs a multiple of samples_per_batch
    for x, y in zip(a, b):
        assert_same_fields(x, y)
        assert x.samples.shape[0] == 6
        assert x.samples.dtype == np.float32
        np.testing.assert_allclose(x.mean, x.samples.mean(axis=0), rtol=1e-5, atol=1e-5)
        assert np.isfinite(x.samples).all()


def test_model_inputs_match_upstream(gp, ours, theirs, upstream_predictor_module, mixed_dataset, monkeypatch):
    """Same series, masks and ids reach the forecaster; timestamps are the context's own periods."""
    seen: dict[str, list] = {"ours": [], "upstream": []}
    upstream_forecaster = upstream_predictor_module.TotoForecaster

    class SpyUpstream(upstream_forecaster):
        def forecast(self, inputs, *args, **kwargs):
            seen["upstream"].append(inputs)
            return super().forecast(inputs, *args, **kwargs)

    monkeypatch.setattr(upstream_predictor_module, "TotoForecaster", SpyUpstream)
    mine = gp.TotoPredictor.create_for_eval(ours, PREDICTION_LENGTH, CONTEXT_LENGTH)
    forecaster = mine.forecast_generator.forecaster_for(ours.model)
    original = forecaster.forecast
    monkeypatch.setattr(forecaster, "forecast", lambda inputs, **kw: seen["ours"].append(inputs) or original(inputs, **kw))
    oracle = upstream_predictor_module.TotoPredictor.create_for_eval(theirs, PREDICTION_LENGTH, CONTEXT_LENGTH)
    forecasts = list(mine.predict(mixed_dataset))
    list(oracle.predict(mixed_dataset))

    assert len(seen["ours"]) == len(seen["upstream"]) == 4
    for a, b, forecast in zip(seen["ours"], seen["upstream"], forecasts):
        for field in ("series", "padding_mask", "id_mask"):
            assert torch.equal(getattr(a, field), getattr(b, field).to(getattr(a, field).dtype)), field
        assert torch.equal(a.time_interval_seconds, torch.full_like(a.time_interval_seconds, 3600))
        last_context_hour = int((forecast.start_date - 1).to_timestamp().timestamp())
        expected = last_context_hour - 3600 * torch.arange(CONTEXT_LENGTH - 1, -1, -1, dtype=torch.int64)
        assert torch.equal(a.timestamp_seconds[0, 0].long(), expected)


# --- our own behaviour ------------------------------------------------------------------------


def test_mixed_shapes_in_one_batch_are_forecast_apart(gp, ours, mixed_dataset):
    """Items with one and three variates share a loader batch but never a forecast call."""
    alone = list(gp.TotoPredictor.create_for_eval(ours, PREDICTION_LENGTH, CONTEXT_LENGTH).predict(mixed_dataset))
    mode = gp.Multivariate(batch_size=4)
    batched_predictor = gp.TotoPredictor.create_for_eval(ours, PREDICTION_LENGTH, CONTEXT_LENGTH, mode=mode)
    batched = list(batched_predictor.predict(mixed_dataset))
    assert [f.item_id for f in batched] == ["a", "b", "c", "d"]
    for x, y in zip(alone, batched):
        assert_same_fields(x, y)
        np.testing.assert_allclose(y.mean, x.mean, rtol=1e-4, atol=1e-4 * np.abs(x.mean).max())


def test_one_dim_targets_and_missing_item_id(gp, ours):
    import pandas as pd

    rng = np.random.default_rng(2)
    dataset = list_dataset([{"target": rng.normal(size=40), "start": "2021-01-01"}] * 2, one_dim_target=True)
    predictor = gp.TotoPredictor.create_for_eval(ours, 5, 32, mode=gp.Multivariate(batch_size=2))
    forecasts = list(predictor.predict(dataset, num_samples=3))
    assert [f.samples.shape for f in forecasts] == [(3, 5), (3, 5)]
    assert [f.item_id for f in forecasts] == [None, None]
    assert forecasts[0].start_date == pd.Period("2021-01-02 16:00", freq="h")


def test_output_transform_gets_batch_and_array(gp, ours, mixed_dataset):
    calls = []

    def double(batch, array):
        calls.append(sorted(batch))
        return 2 * array

    predictor = gp.TotoPredictor.create_for_eval(ours, PREDICTION_LENGTH, CONTEXT_LENGTH)
    plain = list(predictor.predict(mixed_dataset))
    predictor.output_transform = double
    doubled = list(predictor.predict(mixed_dataset))
    assert calls and all("past_target" in keys for keys in calls)
    for x, y in zip(plain, doubled):
        np.testing.assert_allclose(y.mean, 2 * x.mean, rtol=1e-5)
        np.testing.assert_allclose(y.samples, 2 * x.samples, rtol=1e-5)


def test_forecaster_is_built_once_and_options_pass_through(gp, ours, mixed_dataset):
    predictor = gp.TotoPredictor.create_for_eval(ours, 4, 16, torch_compile=False, compile_mode="default")
    generator = predictor.forecast_generator
    first = generator.forecaster_for(ours.model)
    list(predictor.predict(mixed_dataset))
    assert generator.forecaster_for(ours.model) is first
    assert not first.compile_settings.enabled
    compiled = gp.TotoPredictor.create_for_eval(ours, 4, 16, torch_compile=True)
    assert compiled.forecast_generator.forecaster_for(ours.model).compile_settings.enabled  # not run: slow on CPU


def test_ready_forecaster_is_used(gp, ours, mixed_dataset):
    forecaster = TotoForecaster(ours.model, torch_compile=False)
    predictor = gp.TotoPredictor.create_for_eval(ours, 4, 16, forecaster=forecaster)
    assert predictor.forecast_generator.forecaster_for(ours.model) is forecaster
    assert len(list(predictor.predict(mixed_dataset))) == 4


def test_gluonts_backtest_runs(gp, ours):
    """``make_evaluation_predictions`` and ``Evaluator`` accept the predictor as any GluonTS one."""
    from gluonts.evaluation import Evaluator, make_evaluation_predictions

    rng = np.random.default_rng(3)
    dataset = list_dataset([{"target": rng.normal(size=60), "item_id": str(i), "start": "2021-01-01"} for i in range(3)], True)
    predictor = gp.TotoPredictor.create_for_eval(ours, 8, 32, mode=gp.Multivariate(batch_size=3))
    forecasts, series = make_evaluation_predictions(dataset, predictor, num_samples=4)
    metrics, _ = Evaluator(num_workers=None)(list(series), list(forecasts))
    assert np.isfinite(metrics["MASE"]) and np.isfinite(metrics["mean_wQuantileLoss"])


# --- upstream's own tests, with a real model ------------------------------------------------------


def periods(*dates):
    import pandas as pd

    return [pd.Period(d, freq="D") for d in dates]


def item(target, is_pad, start, forecast_start):
    return {"target": target, "start": start, "forecast_start": forecast_start, "is_pad": is_pad}


@pytest.fixture
def stacker(gp, ours):
    mode = gp.Multivariate(batch_size=2)
    return gp.TotoPredictor.create_for_eval(model=ours, prediction_length=3, context_length=4, mode=mode)


def test_totosampleforecast(gp):
    samples = np.random.rand(10, 5, 3)
    mean = samples.mean(axis=0)
    (start,) = periods("2021-01-01")
    forecast = gp.TotoSampleForecast(samples, mean, start)
    assert forecast.samples.shape == samples.shape
    assert np.allclose(forecast.mean, mean)
    assert forecast.start_date == start
    assert forecast.item_id is None


def test_custom_stack_fn(stacker):
    s1, f1, s2, f2 = periods("2021-01-01", "2021-01-31", "2021-01-02", "2021-02-01")
    pad = torch.zeros(3, 30, dtype=torch.bool)
    batch = [item(torch.rand(3, 30), pad, s1, f1), item(torch.rand(3, 30), pad, s2, f2)]
    out = stacker.custom_stack_fn(batch, device=torch.device("cpu"))
    for field in ("target", "is_pad"):  # batchify leaves tensors as lists
        assert isinstance(out[field], list) and len(out[field]) == 2
        assert all(isinstance(t, torch.Tensor) and t.shape == (3, 30) for t in out[field])
    assert out["start"] == [s1, s2] and out["forecast_start"] == [f1, f2]


def test_custom_stack_fn_consistency(stacker):
    s1, f1, s2, f2 = periods("2021-01-01", "2021-01-31", "2021-01-02", "2021-02-01")
    first = item(torch.rand(3, 30), torch.zeros(3, 30, dtype=torch.bool), s1, f1)
    same = item(torch.rand(3, 30), torch.zeros(3, 30, dtype=torch.bool), s2, f2)
    shorter = item(torch.rand(3, 25), torch.zeros(3, 25, dtype=torch.bool), s2, f2)
    regular = stacker.custom_stack_fn([first, same], device="cpu")["target"]
    ragged = stacker.custom_stack_fn([first, shorter], device="cpu")["target"]
    assert [t.shape for t in regular] == [(3, 30), (3, 30)]
    assert [t.shape for t in ragged] == [(3, 30), (3, 25)]  # tensors are never padded
    assert torch.equal(ragged[0], regular[0])


def test_custom_stack_fn_numpy_inputs(stacker):
    rng = np.random.default_rng(42)
    s1, f1, s2, f2 = periods("2021-01-01", "2021-01-31", "2021-01-02", "2021-02-01")
    first = item(rng.random((3, 30)), np.zeros((3, 30), dtype=bool), s1, f1)
    same = item(rng.random((3, 30)), np.zeros((3, 30), dtype=bool), s2, f2)
    shorter = item(rng.random((3, 25)), np.zeros((3, 25), dtype=bool), s2, f2)
    regular = stacker.custom_stack_fn([first, same], device="cpu")
    ragged = stacker.custom_stack_fn([first, shorter], device="cpu")
    assert regular["target"].shape == ragged["target"].shape == (2, 3, 30)
    assert torch.allclose(ragged["target"][0], regular["target"][0])
    assert torch.equal(ragged["target"][1, :, 25:], torch.zeros(3, 5, dtype=ragged["target"].dtype))
    assert torch.equal(ragged["target"][1, :, :25], torch.as_tensor(shorter["target"]))
    assert isinstance(ragged["is_pad"], list)  # non-float arrays stay as they are
    assert ragged["start"] == [s1, s2]


def test_custom_stack_fn_rejects_mixed_ranks(stacker):
    s1, f1 = periods("2021-01-01", "2021-01-31")
    batch = [item(np.zeros((3, 30)), None, s1, f1), item(np.zeros(30), None, s1, f1)]
    with pytest.raises(ValueError, match="'target'"):
        stacker.custom_stack_fn(batch, device="cpu")


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"prediction_length": 0}, "prediction_length"),
        ({"prediction_length": 2.5}, "prediction_length"),
        ({"context_length": 0}, "context_length"),
        ({"samples_per_batch": 0}, "samples_per_batch"),
    ],
)
def test_create_for_eval_rejects_bad_numbers(gp, ours, kwargs, name):
    args = {"prediction_length": 4, "context_length": 16, **kwargs}
    with pytest.raises(ValueError, match=name):
        gp.TotoPredictor.create_for_eval(ours, **args)


def test_bad_arguments_are_named(gp, ours, mixed_dataset):
    with pytest.raises(ValueError, match="batch_size"):
        gp.Multivariate(batch_size=0)
    with pytest.raises(TypeError, match="mode"):
        gp.TotoPredictor.create_for_eval(ours, 4, 16, mode=16)
    with pytest.raises(TypeError, match="model"):
        gp.TotoPredictor.create_for_eval(torch.nn.Linear(2, 2), 4, 16)
    transform = gp.TotoPredictor.create_for_eval(ours, 4, 16).input_transform
    with pytest.raises(TypeError, match="prediction_net"):
        gp.TotoPredictor(["past_target"], torch.nn.Linear(2, 2), 4, transform, gp.TotoSampleForecastGenerator())
    with pytest.raises(TypeError, match="forecast_generator"):
        gp.TotoPredictor(["past_target"], ours, 4, transform, object())
    with pytest.raises(TypeError, match="compile_mood"):
        gp.TotoPredictor.create_for_eval(ours, 4, 16, compile_mood="default")
    with pytest.raises(TypeError, match="not both"):
        gp.TotoPredictor.create_for_eval(ours, 4, 16, forecaster=TotoForecaster(ours.model), torch_compile=False)
    with pytest.raises(ValueError, match="mean"):
        gp.TotoSampleForecast(np.zeros((4, 5)), np.zeros(4), periods("2021-01-01")[0])
    predictor = gp.TotoPredictor.create_for_eval(ours, 4, 16)
    with pytest.raises(ValueError, match="num_samples"):
        predictor.predict(mixed_dataset, num_samples=0)


def test_forecaster_for_another_model_is_rejected(gp, ours, tiny_checkpoint, mixed_dataset):
    other = TotoForecaster(Toto.load_from_checkpoint(tiny_checkpoint).model)
    with pytest.raises(ValueError, match="different model"):
        gp.TotoPredictor.create_for_eval(ours, 4, 16, forecaster=other)
    generator = gp.TotoSampleForecastGenerator(other)
    transform = gp.TotoPredictor.create_for_eval(ours, 4, 16).input_transform
    predictor = gp.TotoPredictor(["past_target"], ours, 4, transform, generator)
    with pytest.raises(ValueError, match="different model"):
        next(iter(predictor.predict(mixed_dataset)))
