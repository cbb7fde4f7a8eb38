"""bfloat16 weights and bfloat16 autocast, compiled on CPU: accuracy against float32 and compile health."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from parity_inputs import scenario

from toto import MaskedTimeseries, Toto, TotoForecaster, TotoPipeline
from toto.compile.diagnostics import snapshot

BF16_BOUND = 2e-2  # max |bf16 - fp32| / max |fp32| of the mean forecast


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def masked(series, observed, ids) -> MaskedTimeseries:
    batch, variates, _ = series.shape
    return MaskedTimeseries(
        series=series,
        padding_mask=observed,
        id_mask=ids,
        timestamp_seconds=torch.zeros_like(series, dtype=torch.int),
        time_interval_seconds=torch.full((batch, variates), 60, dtype=torch.int),
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("precision", ["bf16-weights", "bf16-autocast"])
@torch.no_grad()
def test_bf16_mean_forecast_is_close_to_float32(tiny_checkpoint, precision, record):
    """Every parity scenario eagerly; compiled (whole call) on the two that share a shape."""
    reference = TotoForecaster(Toto.load_from_checkpoint(tiny_checkpoint).model, torch_compile=False)
    weights = torch.bfloat16 if precision == "bf16-weights" else None
    model = Toto.load_from_checkpoint(tiny_checkpoint, dtype=weights).model
    eager = TotoForecaster(model, torch_compile=False)
    compiled = TotoForecaster(model, torch_compile=True, compile_prefill=True)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if weights is None else nullcontext
    patch = model.patch_size
    compiled_names = ["univariate", "large_magnitude"]
    before = snapshot()
    for name in ["multivariate_groups", "left_padding", *compiled_names]:
        inputs = masked(*scenario(name, patch))
        expected = reference.forecast(inputs, 3 * patch).mean
        for mode, forecaster in (("eager", eager), ("compiled", compiled)):
            if mode == "compiled" and name not in compiled_names:
                continue
            with autocast():
                got = forecaster.forecast(inputs, 3 * patch).mean
            assert got.dtype == torch.float32  # data in and out stays float32
            assert record(f"{name} {mode}", rel(got, expected)) <= BF16_BOUND
    stats = snapshot() - before
    assert stats.graph_breaks == 0 and stats.graphs >= 2
    assert compiled.compiled and compiled.compile_error is None
    # Steady state: the same shape again compiles nothing.
    with torch.compiler.set_stance("fail_on_recompile"), autocast():
        for name in compiled_names:
            compiled.forecast(masked(*scenario(name, patch)), 3 * patch)
    steady = snapshot() - before - stats
    assert steady.graphs == 0 and steady.recompiles == 0 and steady.graph_breaks == 0


@torch.no_grad()
def test_bf16_keeps_scaler_statistics_in_float64(tiny_checkpoint):
    model = Toto.load_from_checkpoint(tiny_checkpoint, dtype=torch.bfloat16).model
    forecaster = TotoForecaster(model, torch_compile=False)
    forecaster.forecast(masked(*scenario("large_magnitude", model.patch_size)), 2 * model.patch_size)
    (context, *_), = [b for b in forecaster._buffers.values() if hasattr(b, "head")]
    assert all(t.dtype == torch.float64 for t in context.scaler)
    assert context.cache.keys[0].dtype == torch.bfloat16
    assert context.patch.dtype == torch.float32


@pytest.mark.parametrize("option", ["torch_dtype", "amp_dtype"])
def test_pipeline_runs_bf16_compiled(tiny_checkpoint, option):
    pipeline = TotoPipeline.from_pretrained(
        str(tiny_checkpoint), device_map="cpu", torch_compile=True, compile_prefill=True, **{option: torch.bfloat16}
    )
    series = 50 + torch.randn(2, 200).cumsum(-1)
    forecasts = pipeline.predict(series, prediction_length=40, num_samples=32, samples_per_batch=16, seed=0)
    assert forecasts[0].samples.shape == (1, 1, 40, 32) and forecasts[0].samples.dtype == "float32"
    assert all(torch.isfinite(torch.from_numpy(f.samples)).all() for f in forecasts)
    metadata = pipeline.last_run_metadata
    assert metadata["torch_compile_success"] and metadata["compile_stats"]["graph_breaks"] == 0
    if option == "torch_dtype":
        assert metadata["torch_dtype"] == "torch.bfloat16"
    else:
        assert metadata["amp_dtype"] == "torch.bfloat16"
