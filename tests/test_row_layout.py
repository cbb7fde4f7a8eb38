"""Sample rows are laid out (sample, series): each series' samples must come from that series' own rows."""

from __future__ import annotations

import pytest
import torch

from toto import Toto, TotoForecaster
from toto.data.util.dataset import masked_timeseries


@pytest.fixture(scope="module")
def backbone(tiny_checkpoint):
    return Toto.load_from_checkpoint(tiny_checkpoint).model


@pytest.mark.parametrize("patches", [0.5, 2])  # half a patch: every sample drawn from the prefill (draw)
@pytest.mark.parametrize("use_kv_cache", [True, False])
@torch.no_grad()
def test_each_series_keeps_its_own_samples(backbone, use_kv_cache, patches):
    """Three series at levels 10, 1000 and 100000: every sample stays near its own series' level.

    With the rows laid out (series, sample) instead, some of a series' samples would be
    another series' (the call-protocol path repeats the series per draw; the cached path
    repeats the context's scaler state per sample batch, and lays out draws as rows).
    """
    patch = backbone.patch_size
    levels = torch.tensor([10.0, 1000.0, 100000.0])
    gen = torch.Generator().manual_seed(3)
    series = levels[:, None, None] + 0.5 * torch.randn(3, 1, 4 * patch, generator=gen)
    torch.manual_seed(0)
    forecast = TotoForecaster(backbone, torch_compile=False).forecast(
        masked_timeseries(series), int(patches * patch), num_samples=6, samples_per_batch=6, use_kv_cache=use_kv_cache
    )
    samples = forecast.samples[:, 0]  # [series, horizon, samples]
    ratio = samples / levels[:, None, None]
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), (ratio.amin(dim=(1, 2)), ratio.amax(dim=(1, 2)))
