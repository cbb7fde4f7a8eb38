"""Our model against upstream toto-ts 0.2.0, on the same checkpoint files, float32 on CPU.

Errors are max |ours - oracle| / max |oracle|.
"""

from __future__ import annotations

import math
from importlib import import_module

import pytest
import torch
from oracle import import_oracle
from parity_inputs import SCENARIOS, scenario

from toto import TotoForecaster
from toto.data.util.dataset import pad_array, pad_id_mask
from toto.inference.decoding import ContextBuffers, mean_step, prefill


def rel(ours: torch.Tensor, oracle: torch.Tensor) -> float:
    assert ours.shape == oracle.shape, (ours.shape, oracle.shape)
    return ((ours.double() - oracle.double()).abs().max() / oracle.double().abs().max()).item()


def padded(series, observed, ids, patch):
    dataset = import_oracle("data.util.dataset")
    ours = pad_array(series, patch), pad_array(observed, patch), pad_id_mask(ids, patch)
    theirs = dataset.pad_array(series, patch), dataset.pad_array(observed, patch), dataset.pad_id_mask(ids, patch)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    return ours


@pytest.mark.parametrize("name", SCENARIOS)
@torch.no_grad()
def test_backbone_forward(model_pair, name, record):
    ours, theirs = model_pair
    patch = ours.patch_size
    series, observed, ids = padded(*scenario(name, patch), patch)
    a = ours(series, observed, ids)
    b = theirs(series, observed, ids)
    assert record("loc", rel(a.loc, b.loc)) <= 1e-5
    assert record("scale", rel(a.scale, b.scale)) <= 1e-5
    assert record("mean", rel(a.distribution.mean, b.distribution.mean)) <= 1e-5
    near_mean = b.distribution.mean + 0.1 * torch.randn_like(b.distribution.mean)
    assert record("log_prob", rel(a.distribution.log_prob(near_mean), b.distribution.log_prob(near_mean))) <= 1e-5


def _teacher_forced(series, observed, ids, patch, context_patches, ours, theirs):
    """Feed the context, then one true patch at a time; yield (ours, oracle) per step."""
    ctx = context_patches * patch
    total = series.shape[-1] // patch
    our_cache = ours.allocate_kv_cache(series.shape[0], series.shape[1], series.shape[-1])
    their_cache = theirs.allocate_kv_cache(series.shape[0], series.shape[1], series.shape[-1], "cpu", torch.float32)
    for end in range(context_patches, total + 1):
        t = end * patch
        args = series[..., :t], observed[..., :t], ids[..., :t]
        a = ours(*args, kv_cache=our_cache, scaling_prefix_length=ctx)
        b = theirs(*args, kv_cache=their_cache, scaling_prefix_length=ctx)
        yield end, a, b


@pytest.mark.parametrize("name", ["univariate", "multivariate_groups", "large_magnitude"])
@torch.no_grad()
def test_kv_cached_decoding_teacher_forced(model_pair, name, record):
    ours, theirs = model_pair
    patch = ours.patch_size
    series, observed, ids = scenario(name, patch)
    series, observed, ids = series[..., : 6 * patch], observed[..., : 6 * patch], ids[..., : 6 * patch]
    context_patches = 2  # then 4 appended patches
    steps = 0
    buffers = None
    worst = 0.0
    for end, a, b in _teacher_forced(series, observed, ids, patch, context_patches, ours, theirs):
        last = slice(-patch, None)
        b_mean = b.distribution.mean[..., last]
        errors = [rel(a.distribution.mean[..., last], b_mean), rel(a.loc, b.loc), rel(a.scale, b.scale)]
        # The decode-state path (prefill once, then mean_step with the true patch) agrees too.
        t = end * patch
        if buffers is None:
            context = ContextBuffers.allocate(ours, series.shape[0], series.shape[1], 16, torch.float32, "cpu")
            id_patches = ids[..., :t:patch].long()
            prefill(ours, context, series[..., :t], observed[..., :t], id_patches, torch.tensor(end - 1))
            buffers = context.state
            ours_next = buffers.patch.clone()
        else:
            buffers.patch.copy_(series[..., t - patch : t])
            buffers.cache.advance(1)
            mean_step(ours, context)
            ours_next = buffers.patch
        expected = b.loc[..., last] + b.scale[..., last] * b_mean
        errors.append(rel(ours_next, expected))
        assert max(errors) <= 1e-5, (end, errors)
        worst = max(worst, *errors)
        steps += 1
    record("worst step", worst)
    assert steps == 5  # the context call plus 4 appended patches


def _masked(series, observed, ids, module):
    batch, variates, _ = series.shape
    return module.MaskedTimeseries(
        series=series,
        padding_mask=observed,
        id_mask=ids,
        timestamp_seconds=torch.zeros_like(series, dtype=torch.int),
        time_interval_seconds=torch.full((batch, variates), 60, dtype=torch.int),
    )


# Decoding modes: the KV-cached path eager or compiled, and upstream's uncached re-encoding.
MODES = ["cached", "compiled", "uncached"]


def _forecaster(ours, mode: str) -> TotoForecaster:
    if mode != "cached" and ours.embed_dim > 64:
        pytest.skip(f"{mode} decoding is checked at tiny size only (CPU time)")
    if mode == "compiled":
        torch._dynamo.reset()  # a fresh compile for this test's shapes
    # Compiled means the whole call: static right-padded prefill, draws and decode steps.
    return TotoForecaster(ours, torch_compile=mode == "compiled", compile_prefill=mode == "compiled")


@pytest.mark.parametrize("name", ["univariate", "multivariate_groups", "left_padding", "large_magnitude"])
@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_mean_forecast(model_pair, name, mode, record):
    ours, theirs = model_pair
    forecaster, use_kv_cache = _forecaster(ours, mode), mode != "uncached"
    upstream = import_oracle("inference.forecaster")
    dataset = import_oracle("data.util.dataset")
    patch = ours.patch_size
    series, observed, ids = scenario(name, patch)
    horizon = 4 * patch + 5  # more than 4 patches, not a multiple
    toto_data = import_module("toto.data.util.dataset")
    a = forecaster.forecast(_masked(series, observed, ids, toto_data), horizon, use_kv_cache=use_kv_cache)
    b = upstream.TotoForecaster(theirs).forecast(_masked(series, observed, ids, dataset), horizon, use_kv_cache=use_kv_cache)
    assert a.samples is None and a.mean.shape == b.mean.shape == (*series.shape[:2], horizon)
    assert record("mean", rel(a.mean, b.mean)) <= 1e-4


def _ecdf_at(samples: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return (samples <= points[..., None]).double().mean(-1)


@pytest.mark.parametrize("mode", MODES)
@torch.no_grad()
def test_sampled_forecast_distribution(model_pair, mode, record):
    """Per-step quantiles agree within Monte-Carlo error, judged on the other side's empirical CDF.

    Comparing in probability space keeps the bound meaningful for heavy-tailed
    mixtures: for n draws per side, F_other(q_ours) - q has sd sqrt(2 q (1 - q) / n).
    """
    ours, theirs = model_pair
    full = ours.embed_dim > 64
    forecaster, use_kv_cache = _forecaster(ours, mode), mode != "uncached"
    upstream = import_oracle("inference.forecaster")
    dataset = import_oracle("data.util.dataset")
    patch = ours.patch_size
    series, observed, ids = scenario("multivariate_groups" if not full else "univariate", patch)
    series, observed, ids = (t[:1, :, : 2 * patch] for t in (series, observed, ids))
    horizon = (2 if full else 4) * patch
    n = 2000
    torch.manual_seed(1234)
    a = forecaster.forecast(
        _masked(series, observed, ids, import_module("toto.data.util.dataset")), horizon, num_samples=n, samples_per_batch=400, use_kv_cache=use_kv_cache
    )
    torch.manual_seed(4321)
    b = upstream.TotoForecaster(theirs).forecast(
        _masked(series, observed, ids, dataset), horizon, num_samples=n, samples_per_batch=400, use_kv_cache=use_kv_cache
    )
    assert a.samples.shape == b.samples.shape == (1, series.shape[1], horizon, n)
    assert torch.isfinite(a.samples).all()
    for q in (0.1, 0.5, 0.9):
        tolerance = 4.5 * math.sqrt(2 * q * (1 - q) / n)
        ours_in_theirs = _ecdf_at(b.samples, a.quantile(q)) - q
        theirs_in_ours = _ecdf_at(a.samples, b.quantile(q)) - q
        worst = max(ours_in_theirs.abs().max().item(), theirs_in_ours.abs().max().item())
        assert record(f"q{q} ecdf/bound", worst / tolerance) <= 1.0, (q, worst, tolerance)


def _long_scenario(name: str, patch: int, num_patches: int):
    """A scenario's series, ``num_patches`` long, with its id layout."""
    series, observed, ids = scenario(name, patch)
    walk = import_module("parity_inputs").random_walk
    long = walk(series.shape[0], series.shape[1], num_patches * patch, level=float(series[..., 0].mean()), seed=9)
    return long, torch.ones_like(long, dtype=torch.bool), ids[..., :1].expand_as(long).contiguous()


@pytest.mark.parametrize("name", ["univariate", "multivariate_groups"])
@torch.no_grad()
def test_compiled_prefill_across_one_bucket(model_pair, name, record):
    """Contexts of 1, 7 and 16 patches (some left-padded) share one 16-patch bucket and its graphs.

    Against the oracle: the next-patch forecast of the prefill (forward) within 1e-5 and
    the decoded mean forecast within 1e-4; after the first call, no new graph, recompile
    or graph break, under ``fail_on_recompile``.
    """
    ours, theirs = model_pair
    if ours.embed_dim > 64:
        pytest.skip("checked at tiny size (CPU compile time)")
    from toto.compile.diagnostics import snapshot
    from toto.inference.capacity import CAPACITY_BUCKET

    torch._dynamo.reset()
    forecaster = TotoForecaster(ours, torch_compile=True, compile_prefill=True)
    upstream = import_oracle("inference.forecaster")
    dataset = import_oracle("data.util.dataset")
    toto_data = import_module("toto.data.util.dataset")
    patch = ours.patch_size
    series, observed, ids = _long_scenario(name, patch, CAPACITY_BUCKET)

    def both(length: int, horizon: int):
        window = (t[..., -length:] for t in (series, observed, ids))
        window = tuple(window)
        a = forecaster.forecast(_masked(*window, toto_data), horizon).mean
        b = upstream.TotoForecaster(theirs).forecast(_masked(*window, dataset), horizon).mean
        return a, b

    # Horizon of one patch: the whole forecast is the prefill's next-patch mean (the forward).
    # Horizon of three patches: capacity context + 2, so 14 context patches still fit 16.
    calls = [(L, patch) for L in (patch - 3, 7 * patch - 5, 16 * patch)]
    calls += [(L, 2 * patch + 5) for L in (patch - 3, 7 * patch - 5, 14 * patch)]
    assert {forecaster.capacity_for(L, h) for L, h in calls} == {CAPACITY_BUCKET}
    before = snapshot()
    a, b = both(*calls[0])
    assert record("forward", rel(a, b)) <= 1e-5
    a, b = both(*calls[3])
    assert rel(a, b) <= 1e-4
    warm = snapshot() - before
    assert warm.graph_breaks == 0 and forecaster.compiled and forecaster.compile_error is None
    with torch.compiler.set_stance("fail_on_recompile"):
        for length, horizon in calls:
            a, b = both(length, horizon)
            bound = 1e-5 if horizon == patch else 1e-4
            assert record(f"{length} steps, horizon {horizon}", rel(a, b)) <= bound
    steady = snapshot() - before - warm
    assert steady.graphs == 0 and steady.recompiles == 0 and steady.graph_breaks == 0
