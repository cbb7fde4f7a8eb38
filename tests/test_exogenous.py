"""Exogenous variates with a known future (upstream's ``future_exogenous_variables``).

The last ``num_exogenous_variables`` variates are exogenous: their known future replaces
what the model decodes for them at every step, the padding of the last patch included.
"""

from __future__ import annotations

import math

import pytest
import torch
from compile_backends import HEALTH
from compile_health import steady_state
from oracle import import_oracle
from parity_inputs import masked_inputs, random_walk

import toto.data.util.dataset as ours_dataset
from toto import Toto, TotoForecaster

MODES = ["cached", "compiled", "uncached"]


def rel(ours: torch.Tensor, oracle: torch.Tensor) -> float:
    return ((ours.double() - oracle.double()).abs().max() / oracle.double().abs().max()).item()


def _case(patch: int, variates: int, horizon: int, seed: int = 11):
    """A 2-series batch over ``variates`` (the last ones exogenous) and a known future for ``horizon`` steps."""
    full = random_walk(2, variates, 3 * patch + 5 + horizon, level=20.0, seed=seed)
    return full[..., : -horizon].contiguous(), full[..., -horizon:].contiguous()


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    ours = Toto.load_from_checkpoint(tiny_checkpoint).model
    theirs = import_oracle("model.toto").Toto.load_from_checkpoint(str(tiny_checkpoint)).model.eval()
    return ours, theirs


def _forecaster(model, mode: str) -> TotoForecaster:
    if mode == "compiled":
        torch._dynamo.reset()
    return TotoForecaster(model, torch_compile=mode == "compiled", compile_prefill=mode == "compiled")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exogenous", [1, 2])
@pytest.mark.parametrize("patches", [3, 2.5])  # a whole number of patches, and not
@torch.no_grad()
def test_mean_forecast_with_a_known_future_matches_upstream(models, mode, exogenous, patches, record):
    ours, theirs = models
    patch = ours.patch_size
    horizon = int(patches * patch)
    series, future_all = _case(patch, 3, horizon)
    future = future_all[:, -exogenous:]
    upstream = import_oracle("inference.forecaster")
    use_cache = mode != "uncached"
    a = _forecaster(ours, mode).forecast(
        masked_inputs(ours_dataset, series, exogenous), horizon, use_kv_cache=use_cache, future_exogenous_variables=future
    )
    b = upstream.TotoForecaster(theirs).forecast(
        masked_inputs(import_oracle("data.util.dataset"), series, exogenous),
        horizon,
        use_kv_cache=use_cache,
        future_exogenous_variables=future,
    )
    assert a.mean.shape == b.mean.shape == (2, 3, horizon)
    assert torch.equal(a.mean[:, -exogenous:], future)  # the known future is reported as is
    assert record("mean", rel(a.mean, b.mean)) <= 1e-4


@pytest.mark.parametrize("mode", ["cached", "compiled"])
@torch.no_grad()
def test_sampled_forecast_with_a_known_future(models, mode, record):
    """Every sample path carries the known future; the targets' quantiles agree with upstream's."""
    ours, theirs = models
    patch = ours.patch_size
    horizon, n = 3 * patch - 4, 1200
    series, future_all = _case(patch, 3, horizon, seed=12)
    series, future = series[:1], future_all[:1, -1:]
    torch.manual_seed(5)
    a = _forecaster(ours, mode).forecast(
        masked_inputs(ours_dataset, series, 1), horizon, num_samples=n, samples_per_batch=300, future_exogenous_variables=future
    )
    torch.manual_seed(6)
    b = import_oracle("inference.forecaster").TotoForecaster(theirs).forecast(
        masked_inputs(import_oracle("data.util.dataset"), series, 1),
        horizon,
        num_samples=n,
        samples_per_batch=300,
        future_exogenous_variables=future,
    )
    assert a.samples.shape == b.samples.shape == (1, 3, horizon, n)
    assert torch.equal(a.samples[:, -1:], future[..., None].expand(-1, -1, -1, n))
    for q in (0.1, 0.5, 0.9):
        tolerance = 4.5 * math.sqrt(2 * q * (1 - q) / n)
        targets_a, targets_b = a.samples[:, :2], b.samples[:, :2]
        ours_in_theirs = (targets_b <= targets_a.quantile(q, dim=-1)[..., None]).double().mean(-1) - q
        theirs_in_ours = (targets_a <= targets_b.quantile(q, dim=-1)[..., None]).double().mean(-1) - q
        worst = max(ours_in_theirs.abs().max().item(), theirs_in_ours.abs().max().item())
        assert record(f"q{q} ecdf/bound", worst / tolerance) <= 1.0


@torch.no_grad()
def test_the_known_future_changes_the_targets_forecast(models):
    """The injected values feed the next steps: a different known future moves the targets."""
    ours, _ = models
    patch = ours.patch_size
    series, future = _case(patch, 2, 3 * patch)
    forecaster = TotoForecaster(ours, torch_compile=False)
    inputs = masked_inputs(ours_dataset, series, 1)
    low = forecaster.forecast(inputs, 3 * patch, future_exogenous_variables=future[:, -1:])
    high = forecaster.forecast(inputs, 3 * patch, future_exogenous_variables=future[:, -1:] + 50.0)
    assert torch.equal(low.mean[:, :1, :patch], high.mean[:, :1, :patch])  # the first patch comes from the context
    assert not torch.allclose(low.mean[:, :1, patch:], high.mean[:, :1, patch:])
    # Without a known future the exogenous variates are decoded like targets, and a later call
    # without one is not affected by an earlier call's.
    decoded = forecaster.forecast(inputs, 3 * patch)
    assert not torch.equal(decoded.mean[:, -1:], future[:, -1:])
    fresh = TotoForecaster(ours, torch_compile=False).forecast(inputs, 3 * patch)
    assert torch.equal(decoded.mean, fresh.mean)


@torch.no_grad()
def test_compiled_exogenous_decoding_adds_no_graph_or_recompile(models):
    ours, _ = models
    patch = ours.patch_size
    torch._dynamo.reset()
    forecaster = TotoForecaster(ours, torch_compile=True, compile_prefill=True, compile_backend=HEALTH)
    series, future = _case(patch, 3, 2 * patch)
    inputs, plain = masked_inputs(ours_dataset, series, 2), masked_inputs(ours_dataset, series, 0)
    calls = [
        lambda: forecaster.forecast(inputs, 2 * patch, future_exogenous_variables=future[:, -2:]),
        lambda: forecaster.forecast(inputs, 2 * patch - 3, future_exogenous_variables=future[:, -2:, :-3]),
        lambda: forecaster.forecast(plain, 2 * patch),
        lambda: forecaster.forecast(inputs, 2 * patch, 8, 4, future_exogenous_variables=future[:, -2:]),
        lambda: forecaster.forecast(plain, 2 * patch, 8, 4),
    ]
    steady = steady_state(calls)
    assert steady.graphs == 0 and steady.recompiles == 0 and steady.graph_breaks == 0


@pytest.mark.parametrize(
    "future_shape, message",
    [
        ((3, 1, 20), "dimension 0 \\(batch\\)"),
        ((2, 2, 20), "dimension 1 \\(exogenous\\)"),
        ((2, 1, 19), "dimension 2 \\(prediction_length\\)"),
        ((2, 1, 20, 1), "must be \\[batch, exogenous, prediction_length\\]"),
    ],
)
def test_a_mismatched_future_is_named(models, future_shape, message):
    ours, _ = models
    series, _ = _case(ours.patch_size, 3, 20)
    with pytest.raises(ValueError, match=f"future_exogenous_variables has .*{message}|future_exogenous_variables {message}"):
        TotoForecaster(ours, torch_compile=False).forecast(
            masked_inputs(ours_dataset, series, 1), 20, future_exogenous_variables=torch.zeros(future_shape)
        )


@pytest.mark.parametrize("count", [3, 4, -1])
def test_exogenous_count_must_leave_a_target(models, count):
    ours, _ = models
    series, _ = _case(ours.patch_size, 3, 20)
    with pytest.raises(ValueError, match=f"num_exogenous_variables={count}"):
        TotoForecaster(ours, torch_compile=False).forecast(masked_inputs(ours_dataset, series, count), 20)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_future_value_is_refused_with_its_position(models, bad):
    ours, _ = models
    series, future = _case(ours.patch_size, 3, 20)
    future = future[:, -1:].clone()
    future[1, 0, 7] = bad
    with pytest.raises(ValueError, match=r"non-finite value .* at \(batch, exogenous, step\) \(1, 0, 7\)"):
        TotoForecaster(ours, torch_compile=False).forecast(
            masked_inputs(ours_dataset, series, 1), 20, future_exogenous_variables=future
        )


def test_a_future_without_exogenous_variates_is_refused(models):
    ours, _ = models
    series, future = _case(ours.patch_size, 3, 20)
    with pytest.raises(ValueError, match="num_exogenous_variables is 0"):
        TotoForecaster(ours, torch_compile=False).forecast(
            masked_inputs(ours_dataset, series, 0), 20, future_exogenous_variables=future[:, -1:]
        )


@torch.no_grad()
def test_unbatched_inputs_take_an_unbatched_future(models):
    ours, _ = models
    series, future = _case(ours.patch_size, 3, 20)
    forecaster = TotoForecaster(ours, torch_compile=False)
    batched = forecaster.forecast(masked_inputs(ours_dataset, series[:1], 1), 20, future_exogenous_variables=future[:1, -1:])
    single = forecaster.forecast(
        masked_inputs(ours_dataset, series[:1], 1)._replace(
            series=series[0], padding_mask=torch.ones_like(series[0], dtype=torch.bool),
            id_mask=torch.zeros_like(series[0], dtype=torch.int),
        ),
        20,
        future_exogenous_variables=future[0, -1:],
    )
    torch.testing.assert_close(single.mean, batched.mean)


@torch.no_grad()
def test_upstream_generate_mean_and_samples(models):
    """Upstream's lower-level entry points, with upstream's argument names, agree with ``forecast``."""
    ours, _ = models
    patch = ours.patch_size
    series, future = _case(patch, 3, 2 * patch)
    forecaster = TotoForecaster(ours, torch_compile=False)
    inputs = masked_inputs(ours_dataset, series, 1)
    stamps, intervals = inputs.timestamp_seconds, inputs.time_interval_seconds
    expected = forecaster.forecast(inputs, 2 * patch, future_exogenous_variables=future[:, -1:]).mean
    mean = forecaster.generate_mean(
        inputs=series, prediction_length=2 * patch, timestamp_seconds=stamps, time_interval_seconds=intervals,
        use_kv_cache=True, future_exogenous_variables=future[:, -1:], num_exogenous_variables=1,
    )
    torch.testing.assert_close(mean, expected)
    samples = forecaster.generate_samples(
        inputs=series, prediction_length=2 * patch, num_samples=6, timestamp_seconds=stamps,
        time_interval_seconds=intervals, sampling_batch_size=4,
    )
    assert samples.shape == (2, 3, 2 * patch, 6) and torch.isfinite(samples).all()


def test_a_duck_typed_backbone_builds_a_forecaster():
    """Upstream's tests build the forecaster on ``MagicMock(spec=TotoBackbone)``: no attribute reads at init."""
    from unittest.mock import MagicMock

    from toto.model.backbone import TotoBackbone

    forecaster = TotoForecaster(MagicMock(spec=TotoBackbone), torch_compile=False)
    assert forecaster.device == torch.device("cpu")
    forecaster.model.eval.assert_called_once()


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    from toto import TotoPipeline

    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


@torch.no_grad()
def test_pipeline_future_covariates(pipeline):
    """``predict(..., future_covariates=...)``: the context's last variates take their known future."""
    patch = pipeline.model.model.patch_size
    series, future = _case(patch, 3, 20)
    forecasts = pipeline.predict(series, 20, num_samples=8, samples_per_batch=4, seed=3, future_covariates=future[:, -1:])
    samples = torch.from_numpy(forecasts[1].samples)  # (1, variates, 20, 8)
    assert torch.equal(samples[0, -1], future[1, -1, :, None].expand(-1, 8).float())
    # The same numbers as the forecaster with upstream's argument, at the same seed.
    torch.manual_seed(3)
    direct = pipeline.forecaster.forecast(
        masked_inputs(ours_dataset, series, 1), 20, 8, 4, future_exogenous_variables=future[:, -1:]
    )
    torch.testing.assert_close(samples, direct.samples[1:2].float())
    # A single (1, variates, time) series may give its covariates without the batch dimension; numpy works too.
    one = pipeline.predict(series[:1], 20, num_samples=4, samples_per_batch=4, future_covariates=future[0, -1:].numpy())
    assert one[0].samples.shape == (1, 3, 20, 4)


@pytest.mark.parametrize(
    "shape, message",
    [((2, 3, 20), "future_covariates has 3 covariates but the context has 3 variates"),
     ((2, 1, 21), "future_covariates has 21 along dimension 2"),
     ((1, 1, 20), "future_covariates has 1 along dimension 0"),
     ((20,), "future_covariates must be \\(batch, covariates, prediction_length\\)")],
)
def test_pipeline_future_covariates_errors_name_the_argument(pipeline, shape, message):
    series, _ = _case(pipeline.model.model.patch_size, 3, 20)
    with pytest.raises(ValueError, match=message):
        pipeline.predict(series, 20, num_samples=4, samples_per_batch=4, future_covariates=torch.zeros(shape))
