"""Models other than our backbone are forecast through upstream's call protocol (``toto.inference.stepwise``)."""

from __future__ import annotations

import pytest
import torch
from oracle import import_oracle
from parity_inputs import random_walk
from torch import nn

import toto.data.util.dataset as ours_dataset
from toto import Toto, TotoForecaster


class Wrapped(nn.Module):
    """A user's wrapper: follows the protocol by delegating, but is not a TotoBackbone."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.patch_embed = backbone.patch_embed
        self.calls = 0

    def allocate_kv_cache(self, **kwargs):
        return self.backbone.allocate_kv_cache(**kwargs)

    def forward(self, **kwargs):
        self.calls += 1
        return self.backbone(**kwargs)


def _inputs(module, series, num_exogenous: int = 0):
    batch, variates, _ = series.shape
    observed = torch.ones_like(series, dtype=torch.bool)
    observed[0, 1, :7] = False
    return module.MaskedTimeseries(
        series=series,
        padding_mask=observed,
        id_mask=torch.zeros_like(series, dtype=torch.int),
        timestamp_seconds=torch.zeros_like(series, dtype=torch.int),
        time_interval_seconds=torch.full((batch, variates), 60, dtype=torch.int),
        num_exogenous_variables=num_exogenous,
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope="module")
def ours(tiny_checkpoint):
    return Toto.load_from_checkpoint(tiny_checkpoint).model


@pytest.mark.parametrize("use_kv_cache", [True, False])
@torch.no_grad()
def test_a_wrapped_backbone_forecasts_as_the_fast_path(ours, use_kv_cache, record):
    patch = ours.patch_size
    series = random_walk(2, 3, 2 * patch + 9, level=10.0, seed=31)
    wrapped = Wrapped(ours)
    horizon = 3 * patch - 2
    slow = TotoForecaster(wrapped, torch_compile=False).forecast(_inputs(ours_dataset, series), horizon, use_kv_cache=use_kv_cache)
    fast = TotoForecaster(ours, torch_compile=False).forecast(_inputs(ours_dataset, series), horizon, use_kv_cache=use_kv_cache)
    assert wrapped.calls == 3  # one call per patch: it really went through the wrapper
    assert slow.mean.shape == (2, 3, horizon)
    assert record("mean", rel(slow.mean, fast.mean)) <= 1e-5


@pytest.mark.parametrize("use_kv_cache", [True, False])
@torch.no_grad()
def test_upstreams_own_backbone_forecasts_as_upstream(tiny_checkpoint, use_kv_cache, record):
    theirs = import_oracle("model.toto").Toto.load_from_checkpoint(str(tiny_checkpoint)).model.eval()
    patch = theirs.patch_embed.stride
    full = random_walk(2, 3, 3 * patch + 2 * patch, level=10.0, seed=32)
    series, future = full[..., : 3 * patch], full[:, -1:, 3 * patch :]
    ours_forecast = TotoForecaster(theirs, torch_compile=False).forecast(
        _inputs(ours_dataset, series, 1), 2 * patch, use_kv_cache=use_kv_cache, future_exogenous_variables=future
    )
    upstream = import_oracle("inference.forecaster").TotoForecaster(theirs).forecast(
        _inputs(import_oracle("data.util.dataset"), series, 1),
        2 * patch,
        use_kv_cache=use_kv_cache,
        future_exogenous_variables=future,
    )
    assert torch.equal(ours_forecast.mean[:, -1:], future)
    assert record("mean", rel(ours_forecast.mean, upstream.mean)) <= 1e-6


@torch.no_grad()
def test_sample_paths_through_the_protocol(ours):
    patch = ours.patch_size
    series = random_walk(1, 2, 2 * patch, level=10.0, seed=33)
    torch.manual_seed(0)
    forecast = TotoForecaster(Wrapped(ours), torch_compile=False).forecast(
        _inputs(ours_dataset, series), 2 * patch, num_samples=7, samples_per_batch=3
    )
    assert forecast.samples.shape == (1, 2, 2 * patch, 7)
    assert torch.isfinite(forecast.samples).all()
    assert forecast.samples.std(-1).min() > 0  # draws, not copies of one path
