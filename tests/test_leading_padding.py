"""``hide_leading_padding``: a series left-padded to share a batch forecasts as it would alone.

Upstream's time attention has no padding mask: whole patches of left padding are
attended to, so a short series' forecast depends on the longest series it is batched
with. With the option, the patches before a series' first observed value are hidden,
and each series' rotary positions start where they would alone: Toto's xPos scale is
laid out apart from its rotation pairs, so its attention is not purely relative.
"""

from __future__ import annotations

import pytest
import torch
from checkpoints import TINY_CONFIG, random_published_state, write_checkpoint
from compile_backends import HEALTH
from compile_health import steady_state
from parity_inputs import random_walk

from toto import Toto, TotoForecaster
from toto.data.util.dataset import masked_timeseries


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return Toto.load_from_checkpoint(tiny_checkpoint).model


def _batch(long: torch.Tensor, short: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``long`` and ``short`` (each ``[1, variates, time]``) in one batch, ``short`` left-padded."""
    series = torch.zeros(2, long.shape[1], long.shape[-1])
    observed = torch.zeros_like(series, dtype=torch.bool)
    series[0], observed[0] = long[0], True
    series[1, :, -short.shape[-1] :], observed[1, :, -short.shape[-1] :] = short[0], True
    return series, observed


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("variates", [1, 3])
@torch.no_grad()
def test_a_padded_series_forecasts_as_alone(model, compiled, variates, record):
    patch = model.patch_size
    long = random_walk(1, variates, 7 * patch + 3, level=10.0, seed=51)
    short = random_walk(1, variates, 2 * patch + 5, level=-4.0, seed=52)  # 5 whole patches of padding in the batch
    horizon = 3 * patch + 2
    if compiled:
        torch._dynamo.reset()
    # Compiled on the health backend: the hiding is in the traced graph; inductor's kernels for
    # left-padded batches are checked by test_parity's compiled left_padding case.
    forecaster = TotoForecaster(model, torch_compile=compiled, compile_prefill=compiled, compile_backend=HEALTH)
    alone = forecaster.forecast(masked_timeseries(short), horizon, hide_leading_padding=True).mean
    assert torch.equal(alone, forecaster.forecast(masked_timeseries(short), horizon).mean)  # nothing to hide alone
    long_alone = forecaster.forecast(masked_timeseries(long), horizon).mean
    batched = forecaster.forecast(masked_timeseries(*_batch(long, short)), horizon, hide_leading_padding=True).mean
    attended = forecaster.forecast(masked_timeseries(*_batch(long, short)), horizon).mean
    assert record("short, hidden", rel(batched[1:], alone)) <= 1e-5
    assert record("long", rel(batched[:1], long_alone)) <= 1e-6
    assert rel(attended[1:], alone) > 1e-2  # upstream's behaviour: the padding changes the forecast


@torch.no_grad()
def test_sample_rows_hide_the_padding_in_the_shared_prefix(model):
    """Sample rows read the context's cache as a shared prefix (draws differ with the batch, so
    this compares decode steps, not forecasts): hiding there equals hiding in a per-row copy,
    which the mean-path test above ties to the series alone."""
    from toto.inference.decoding import ContextBuffers, DecodeBuffers, begin, prefill
    from toto.model.kv_cache import PrefixedCache

    patch, batch, variates, repeats, real = model.patch_size, 2, 2, 3, 5
    series = random_walk(batch, variates, real * patch, seed=58)
    observed = torch.ones_like(series, dtype=torch.bool)
    observed[1, :, : 3 * patch + 4] = False  # series 1: three whole patches of padding
    first_real = torch.tensor([0, 3])
    ids = torch.zeros(batch, variates, real, dtype=torch.long)
    context = ContextBuffers.allocate(model, batch, variates, 8, torch.float32, "cpu")
    prefill(model, context, series, observed, ids, torch.tensor(real - 1), first_real=first_real)
    assert torch.equal(context.first_real, first_real)
    buffers = DecodeBuffers.allocate(model, batch * repeats, variates, 4, torch.float32, "cpu")
    begin(buffers, context)
    copied = model.allocate_kv_cache(batch * repeats, variates, 8 * patch)
    for dst, src in zip(copied.tensors(), context.state.cache.tensors()):
        dst[:, :, :real] = src[:, :, :real].repeat(repeats, 1, 1, 1)
    shared = PrefixedCache(buffers.cache, context.state.cache, context.state.position)
    step_ids = ids[..., -1:].repeat(repeats, 1, 1)
    gen = torch.Generator().manual_seed(59)
    for step in range(3):
        scaled = torch.randn(batch * repeats, variates, patch, generator=gen)
        position = torch.tensor([real + step])
        expected = model.encode(scaled, step_ids, position, copied, first_real=first_real.repeat(repeats))
        got = model.encode(scaled, step_ids, position, shared, first_real=first_real)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Last, since it overwrites the step's cache slots: without hiding, the steps differ.
    unhidden = model.encode(scaled, step_ids, position, shared)
    assert not torch.allclose(unhidden, got, rtol=1e-3, atol=1e-3)


@torch.no_grad()
def test_with_variate_labels_the_label_stays_visible(tmp_path):
    """The label token sits before the padding; it keeps rotary position 0 and stays attended to."""
    state = random_published_state(TINY_CONFIG, seed=6, variate_labels=True)
    model = Toto.load_from_checkpoint(write_checkpoint(tmp_path / "labels", TINY_CONFIG, state=state)).model
    patch = model.patch_size
    long, short = random_walk(1, 2, 6 * patch, level=3.0, seed=56), random_walk(1, 2, 2 * patch - 3, seed=57)
    forecaster = TotoForecaster(model, torch_compile=False)
    alone = forecaster.forecast(masked_timeseries(short), 3 * patch).mean
    batched = forecaster.forecast(masked_timeseries(*_batch(long, short)), 3 * patch, hide_leading_padding=True).mean
    assert rel(batched[1:], alone) <= 1e-5


@torch.no_grad()
def test_hiding_adds_no_recompile(model):
    patch = model.patch_size
    torch._dynamo.reset()
    forecaster = TotoForecaster(model, torch_compile=True, compile_prefill=True, compile_backend=HEALTH)
    long = random_walk(1, 1, 6 * patch, level=10.0, seed=55)
    batches = [_batch(long, random_walk(1, 1, n, seed=n)) for n in (patch + 3, 3 * patch)]
    calls = [
        *(lambda b=b: forecaster.forecast(masked_timeseries(*b), 2 * patch, hide_leading_padding=True) for b in batches),
        lambda: forecaster.forecast(masked_timeseries(*batches[0]), 2 * patch),
        lambda: forecaster.forecast(masked_timeseries(*batches[1]), 2 * patch, 8, 4, hide_leading_padding=True),
    ]
    steady = steady_state(calls)
    assert steady.graphs == 0 and steady.recompiles == 0 and steady.graph_breaks == 0


def test_needs_the_kv_cache(model):
    with pytest.raises(ValueError, match="hide_leading_padding needs use_kv_cache=True"):
        TotoForecaster(model, torch_compile=False).forecast(
            masked_timeseries(torch.randn(1, 1, 40)), 8, use_kv_cache=False, hide_leading_padding=True
        )
