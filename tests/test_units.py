"""Unit tests against independent references (numpy, torch.distributions, torch.quantile, hand formulas).

No expected value here comes from our own code: each is either derived from a
reference implementation or from the formula the component documents.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributions as D

import toto
from toto import Forecast, MaskedTimeseries, Toto, TotoForecaster
from toto.cli import main as cli_main
from toto.data.util.dataset import pad_array, pad_id_mask, replace_extreme_values
from toto.model.distribution import AffineTransformed, MixtureOfStudentT
from toto.model.kv_cache import KVCache
from toto.model.scaler import CausalPatchScaler

PATCH = 8  # scaler tests
MIN_SCALE = 0.1


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Element-wise relative error, max over elements (b is the reference)."""
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs().clamp_min(1e-300)).max().item()


# --------------------------------------------------------------------------- 1. scaler


def _random_walk(shape, level=0.0, step=1.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (level + step * torch.randn(shape, generator=gen, dtype=torch.float64).cumsum(-1)).to(dtype)


@pytest.mark.parametrize("stabilize", [True, False])
def test_scaler_step_matches_full_sequence(stabilize):
    scaler = CausalPatchScaler(PATCH, stabilize_with_global=stabilize)
    context_len, appended = 4 * PATCH, 3
    full = _random_walk((2, 3, context_len + appended * PATCH), level=500.0, step=3.0, seed=1)
    observed = torch.ones_like(full, dtype=torch.bool)
    gen = torch.Generator().manual_seed(2)
    observed[..., :context_len] = torch.rand(full[..., :context_len].shape, generator=gen) > 0.25
    observed[..., 0] = True

    _, ref_loc, ref_scale, ref_state = scaler(full, observed, prefix_length=context_len)
    ref_scaled = (full - ref_loc) / ref_scale

    _, _, _, state = scaler(full[..., :context_len], observed[..., :context_len], prefix_length=context_len)
    for i in range(appended):
        start = context_len + i * PATCH
        patch = full[..., start : start + PATCH]
        scaled, loc, scale, state = scaler.step(state, patch)
        assert loc.shape == scale.shape == full.shape[:2]
        # The full-sequence loc/scale is constant within a patch: compare every step of it.
        assert max_rel(loc[..., None].expand_as(patch), ref_loc[..., start : start + PATCH]) <= 1e-6, i
        assert max_rel(scale[..., None].expand_as(patch), ref_scale[..., start : start + PATCH]) <= 1e-6, i
        torch.testing.assert_close(scaled, ref_scaled[..., start : start + PATCH], rtol=1e-5, atol=1e-5)
    # After the last appended patch, the running sums equal those of the whole sequence.
    for ours, ref in zip(state, ref_state):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-6)


def _numpy_causal_stats(x: np.ndarray, observed: np.ndarray, patch: int):
    """Per patch: mean of observed values so far, sqrt(Bessel variance + 0.1)."""
    locs, scales = [], []
    for end in range(patch, len(x) + 1, patch):
        values = x[:end][observed[:end]].astype(np.float64)
        mean = values.mean()
        var = ((values - mean) ** 2).sum() / max(len(values) - 1, 1)
        locs.append(mean)
        scales.append(math.sqrt(var + MIN_SCALE))
    return np.array(locs), np.array(scales)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scaler_matches_numpy_reference(dtype):
    num_patches = 6
    x = _random_walk((2, 2, num_patches * PATCH), level=30.0, step=2.0, seed=3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    observed = torch.rand(x.shape, generator=gen) > 0.3
    observed[..., 0] = True  # every patch has at least one observed value up to its end
    observed[0, 0, PATCH : 2 * PATCH] = False  # a whole unobserved patch
    observed[1, 1, :] = True  # and one fully observed series
    x = torch.where(observed, x, torch.full_like(x, 1234.5))  # unobserved values must be ignored
    x = x.to(dtype)

    scaler = CausalPatchScaler(PATCH, stabilize_with_global=False)
    scaled, loc, scale, _ = scaler(x, observed)
    assert scaled.dtype == loc.dtype == scale.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    for b in range(2):
        for v in range(2):
            ref_loc, ref_scale = _numpy_causal_stats(x[b, v].double().numpy(), observed[b, v].numpy(), PATCH)
            ref_loc = torch.from_numpy(ref_loc).repeat_interleave(PATCH)
            ref_scale = torch.from_numpy(ref_scale).repeat_interleave(PATCH)
            assert max_rel(loc[b, v], ref_loc) <= tol, (b, v)
            assert max_rel(scale[b, v], ref_scale) <= tol, (b, v)
            expected = (x[b, v].double() - ref_loc) / ref_scale
            torch.testing.assert_close(scaled[b, v].double(), expected, rtol=10 * tol, atol=10 * tol)


def _spiky_series():
    """First patch constant 0, later patches alternating +-1e13; a few unobserved steps with junk."""
    x = torch.zeros(1, 1, 4 * PATCH, dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(3 * PATCH // 2)
    x[..., PATCH:] = 1e13 * signs
    observed = torch.ones_like(x, dtype=torch.bool)
    observed[..., PATCH + 3] = False
    observed[..., 2 * PATCH + 6] = False
    x = torch.where(observed, x, torch.full_like(x, 5e12))
    return x, observed


def _numpy_global_scale(x: torch.Tensor, observed: torch.Tensor) -> float:
    values = x.flatten().numpy()[observed.flatten().numpy()]
    return math.sqrt(values.var(ddof=0) + MIN_SCALE)  # population variance


def test_scaler_global_lower_clamp():
    x, observed = _spiky_series()
    g = _numpy_global_scale(x, observed)
    expected = max(MIN_SCALE, g * 1e-10)
    assert expected > 10 * math.sqrt(MIN_SCALE)  # the clamp binds: it is not the unclamped value

    _, _, scale, _ = CausalPatchScaler(PATCH, stabilize_with_global=True, scale_factor_exponent=10.0)(x, observed)
    assert max_rel(scale[..., :PATCH], torch.full((PATCH,), expected, dtype=torch.float64)) <= 1e-9

    _, _, scale, _ = CausalPatchScaler(PATCH, stabilize_with_global=False)(x, observed)
    assert max_rel(scale[..., :PATCH], torch.full((PATCH,), math.sqrt(MIN_SCALE), dtype=torch.float64)) <= 1e-12


def test_scaler_global_upper_clamp_uses_prefix_only():
    x, observed = _spiky_series()
    x[..., :PATCH] = _random_walk((PATCH,), seed=5, dtype=torch.float64)
    g = _numpy_global_scale(x[..., :PATCH], observed[..., :PATCH])  # statistics of the prefix alone
    _, _, scale, _ = CausalPatchScaler(PATCH, scale_factor_exponent=10.0)(x, observed, prefix_length=PATCH)
    # Later patches have a causal scale near 1e13, far above g * 1e10: clamped to it.
    later = scale[..., PATCH:]
    assert max_rel(later, torch.full_like(later, g * 1e10)) <= 1e-9
    # The first patch is not clamped: its own numpy statistics.
    _, ref_scale = _numpy_causal_stats(x[0, 0].numpy(), observed[0, 0].numpy(), PATCH)
    assert max_rel(scale[..., :PATCH], torch.full((PATCH,), ref_scale[0], dtype=torch.float64)) <= 1e-9


# --------------------------------------------------------------------------- 2. distribution


def _params(batch, k, dtype=torch.float64, seed=0, df_low=2.05, df_high=30.0):
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch, k)
    df = df_low + (df_high - df_low) * torch.rand(shape, generator=gen, dtype=dtype)
    loc = 3.0 * torch.randn(shape, generator=gen, dtype=dtype)
    scale = 0.1 + 2.0 * torch.rand(shape, generator=gen, dtype=dtype)
    logits = torch.randn(shape, generator=gen, dtype=dtype)
    return df, loc, scale, logits


def _reference(df, loc, scale, logits):
    return D.MixtureSameFamily(D.Categorical(logits=logits), D.StudentT(df, loc, scale))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mixture_moments_and_log_prob_match_torch(dtype):
    params = _params((4, 6), k=5, dtype=dtype, seed=11)
    ours, ref = MixtureOfStudentT(*params), _reference(*params)
    assert ours.batch_shape == ref.batch_shape == (4, 6)
    assert max_rel(ours.mean, ref.mean) <= 1e-5
    assert max_rel(ours.variance, ref.variance) <= 1e-5
    gen = torch.Generator().manual_seed(12)
    # Values near the bulk and far in the tails, with a leading sample dimension.
    values = ref.mean + ref.stddev * torch.randn((7, 4, 6), generator=gen, dtype=dtype) * torch.tensor(
        [0.1, 1.0, 3.0, 10.0, 100.0, -30.0, 1e3], dtype=dtype
    ).view(7, 1, 1)
    lp = ours.log_prob(values)
    assert lp.shape == (7, 4, 6)
    torch.testing.assert_close(lp, ref.log_prob(values), rtol=1e-5, atol=1e-5 if dtype == torch.float32 else 1e-10)


def _assert_same_distribution(ours: torch.Tensor, theirs: torch.Tensor, sigmas: float = 5.0):
    """Samples [n, *batch]: each side's ECDF at the other's quantiles is within ``sigmas`` standard errors."""
    n = ours.shape[0]
    assert theirs.shape[0] == n
    a, b = ours.reshape(n, -1).T.double(), theirs.reshape(n, -1).T.double()
    qs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    tolerance = sigmas * torch.sqrt(2 * qs * (1 - qs) / n)[:, None]
    for x, y in ((a, b), (b, a)):
        quantiles = torch.quantile(x, qs, dim=-1)  # [q, series]
        ecdf = (y[None] <= quantiles[..., None]).double().mean(-1)
        error = (ecdf - qs[:, None]).abs()
        assert (error <= tolerance).all(), (error / tolerance).max().item()


SAMPLING_CASES = {
    "random": _params((3,), k=4, dtype=torch.float32, seed=21),
    "heavy_tails": (
        torch.full((2, 3), 2.05),
        torch.tensor([[0.0, 1.0, -1.0], [5.0, 5.5, 4.5]]),
        torch.tensor([[1.0, 0.5, 2.0], [0.3, 0.3, 3.0]]),
        torch.tensor([[0.0, 0.5, -0.5], [1.0, 0.0, 0.0]]),
    ),
    "separated": (
        torch.tensor([5.0, 8.0]),
        torch.tensor([-20.0, 20.0]),
        torch.tensor([1.0, 2.0]),
        torch.tensor([0.0, math.log(3.0)]),
    ),
}


@pytest.mark.parametrize("case", list(SAMPLING_CASES))
def test_mixture_sampling_matches_torch(case):
    params = SAMPLING_CASES[case]
    n = 40_000
    torch.manual_seed(101)
    ours = MixtureOfStudentT(*params).sample((n,))
    torch.manual_seed(202)
    theirs = _reference(*params).sample((n,))
    assert ours.shape == theirs.shape == (n, *params[1].shape[:-1])
    assert torch.isfinite(ours).all()
    _assert_same_distribution(ours, theirs)
    if case == "separated":  # mixture weights 1/4, 3/4: the share of draws near +20
        share = (ours > 0).double().mean().item()
        assert abs(share - 0.75) <= 5 * math.sqrt(0.75 * 0.25 / n)


def test_affine_transformed_matches_torch():
    params = _params((3, 4), k=3, dtype=torch.float64, seed=31)
    gen = torch.Generator().manual_seed(32)
    loc = 100.0 * torch.randn((3, 4), generator=gen, dtype=torch.float64)
    scale = 0.5 + 5.0 * torch.rand((3, 4), generator=gen, dtype=torch.float64)
    ours = AffineTransformed(MixtureOfStudentT(*params), loc, scale)
    base_ref = _reference(*params)
    ref = D.TransformedDistribution(base_ref, [D.AffineTransform(loc, scale)])

    assert max_rel(ours.mean, loc + scale * base_ref.mean) <= 1e-10
    assert max_rel(ours.variance, scale**2 * base_ref.variance) <= 1e-10
    values = loc + scale * (base_ref.mean + 4.0 * torch.randn((5, 3, 4), generator=gen, dtype=torch.float64))
    torch.testing.assert_close(ours.log_prob(values), ref.log_prob(values), rtol=1e-8, atol=1e-10)

    n = 40_000
    torch.manual_seed(7)
    drawn = ours.sample((n,))
    torch.manual_seed(8)
    _assert_same_distribution(drawn, ref.sample((n,)))


@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 3)])
def test_sample_shapes(sample_shape):
    params = _params((4, 6), k=3, dtype=torch.float32, seed=41)
    mixture = MixtureOfStudentT(*params)
    assert mixture.sample(sample_shape).shape == (*sample_shape, 4, 6)
    wrapped = AffineTransformed(mixture, torch.zeros(4, 6), torch.ones(4, 6))
    assert wrapped.sample(torch.Size(sample_shape)).shape == (*sample_shape, 4, 6)


# --------------------------------------------------------------------------- 3. Forecast


@pytest.mark.parametrize("num_samples", [10, 11])
def test_forecast_quantiles_match_torch(num_samples):
    samples = torch.randn(2, 3, 4, num_samples)
    forecast = Forecast(mean=samples.mean(-1), samples=samples)
    for q in (0.0, 0.1, 0.33, 0.5, 0.77, 1.0):
        torch.testing.assert_close(forecast.quantile(q), torch.quantile(samples, q, dim=-1), rtol=1e-6, atol=1e-6)
    qs = torch.tensor([0.0, 0.05, 0.5, 0.9, 1.0])
    result = forecast.quantile(qs)
    assert result.shape == (5, 2, 3, 4)
    torch.testing.assert_close(result, torch.quantile(samples, qs, dim=-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(forecast.median, torch.quantile(samples, 0.5, dim=-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(forecast.median, forecast.quantile(0.5))
    torch.testing.assert_close(forecast.std, torch.from_numpy(samples.double().numpy().std(-1, ddof=1)).float())


def test_forecast_without_samples_raises():
    forecast = Forecast(mean=torch.zeros(1, 1, 3))
    with pytest.raises(ValueError):
        forecast.quantile(0.5)
    with pytest.raises(ValueError):
        forecast.std
    with pytest.raises(ValueError):
        forecast.median


@pytest.mark.parametrize("q", [-0.1, 1.1, torch.tensor([0.5, 1.5]), torch.tensor([-1e-3, 0.5])])
def test_forecast_quantile_out_of_range(q):
    samples = torch.randn(1, 2, 3, 5)
    with pytest.raises(ValueError):
        Forecast(mean=samples.mean(-1), samples=samples).quantile(q)


def test_forecast_quantile_nan_is_rejected():
    samples = torch.randn(1, 2, 3, 5)
    with pytest.raises(ValueError):
        Forecast(mean=samples.mean(-1), samples=samples).quantile(float("nan"))


# --------------------------------------------------------------------------- 4. padding helpers


def test_pad_array_left_pads_to_multiple():
    values = torch.arange(1.0, 11.0).reshape(1, 2, 5)
    padded = pad_array(values, 4)
    assert padded.shape == (1, 2, 8)
    assert torch.equal(padded[..., :3], torch.zeros(1, 2, 3))
    assert torch.equal(padded[..., 3:], values)

    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    padded_mask = pad_array(mask, 4)
    assert padded_mask.dtype == torch.bool and padded_mask.shape == (2, 3, 8)
    assert not padded_mask[..., :3].any() and padded_mask[..., 3:].all()

    exact = torch.randn(2, 3, 8)
    assert torch.equal(pad_array(exact, 4), exact)
    assert torch.equal(pad_array(exact, 8), exact)


def test_pad_id_mask_repeats_left_edge():
    ids = torch.tensor([[[3, 3, 4, 4, 4]], [[7, 1, 1, 1, 1]]])  # [batch 2, variate 1, time 5]
    padded = pad_id_mask(ids, 4)
    expected = torch.tensor([[[3, 3, 3, 3, 3, 4, 4, 4]], [[7, 7, 7, 7, 1, 1, 1, 1]]])
    assert torch.equal(padded, expected)
    exact = torch.tensor([[1, 1, 2, 2]])
    assert torch.equal(pad_id_mask(exact, 2), exact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_replace_extreme_values(dtype):
    big = torch.finfo(dtype).max
    values = torch.tensor([1.0, -2.5, float("nan"), float("inf"), -float("inf"), 0.0, 3.0], dtype=dtype)
    values = torch.cat((values, torch.tensor([big / 2, big, -big / 2, big / 4], dtype=dtype)))
    out = replace_extreme_values(values)
    expected = torch.tensor([1.0, -2.5, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0], dtype=dtype)
    expected = torch.cat((expected, torch.tensor([big / 4], dtype=dtype)))
    assert out.dtype == dtype
    assert torch.equal(out, expected)
    assert torch.equal(replace_extreme_values(torch.tensor([float("nan"), 2.0]), replacement=-1.0), torch.tensor([-1.0, 2.0]))


# --------------------------------------------------------------------------- 5. KV cache


def test_kv_cache_advance_reserve_capacity():
    cache = KVCache(num_time_layers=2, rows=3, num_heads=2, head_dim=5, capacity=4)
    assert cache.capacity == 4 and cache.length == 0
    assert cache.advance(2) == 0 and cache.length == 2
    positions = cache.reserve(1)
    assert isinstance(positions, torch.Tensor) and torch.equal(positions, torch.arange(2, 3))
    with pytest.raises(ValueError, match=r"(?i)full") as info:
        cache.advance(2)
    assert "4" in str(info.value)
    assert cache.length == 3  # a refused claim changes nothing
    assert torch.equal(cache.reserve(1), torch.tensor([3]))
    assert cache.length == 4
    with pytest.raises(ValueError, match=r"(?i)full"):
        cache.reserve(1)
    with pytest.raises(ValueError):
        KVCache(num_time_layers=1, rows=1, num_heads=1, head_dim=1, capacity=0)


def test_kv_cache_reserve_from_empty():
    cache = KVCache(num_time_layers=1, rows=1, num_heads=1, head_dim=2, capacity=6)
    assert torch.equal(cache.reserve(4), torch.arange(4))
    assert cache.length == 4


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return Toto.load_from_checkpoint(tiny_checkpoint).model.eval()


@torch.no_grad()
def test_sample_rows_decode_over_the_shared_context_as_over_a_copy(tiny_model):
    """Rows are (sample, series). Decoding against the prefill's cache as a shared prefix
    gives what decoding against a per-row copy of it gives (the layout before prefix
    sharing), patch after patch; ``begin`` starts every row at the end of its context."""
    from toto.inference.decoding import ContextBuffers, DecodeBuffers, begin, prefill
    from toto.model.kv_cache import PrefixedCache

    patch, batch, variates, repeats, real, steps = tiny_model.patch_size, 2, 3, 4, 3, 3
    series = _random_walk((batch, variates, real * patch), seed=52)
    observed = torch.ones_like(series, dtype=torch.bool)
    id_patches = torch.tensor([0, 0, 1])[None, :, None].expand(batch, variates, real)
    context = ContextBuffers.allocate(tiny_model, batch, variates, 8, torch.float32, "cpu")
    prefill(tiny_model, context, series, observed, id_patches, torch.tensor(real - 1))
    buffers = DecodeBuffers.allocate(tiny_model, batch * repeats, variates, 4, torch.float32, "cpu")
    begin(buffers, context)
    assert buffers.position.item() == real
    torch.testing.assert_close(
        buffers.scaler.value_sum.unflatten(0, (repeats, batch)), context.state.scaler.value_sum.expand(repeats, -1, -1)
    )
    first = buffers.patch.unflatten(0, (repeats, batch))
    assert not torch.equal(first[0], first[1])  # each sample row starts from its own draw

    copied = tiny_model.allocate_kv_cache(batch * repeats, variates, 8 * patch)
    for dst, src in zip(copied.tensors(), context.state.cache.tensors()):
        dst[:, :, :real] = src[:, :, :real].repeat(repeats, 1, 1, 1)
    shared = PrefixedCache(buffers.cache, context.state.cache, context.state.position)
    ids = id_patches[..., -1:].repeat(repeats, 1, 1)
    gen = torch.Generator().manual_seed(55)
    for step in range(steps):
        scaled = torch.randn(batch * repeats, variates, patch, generator=gen)
        position = torch.tensor([real + step])
        expected = tiny_model.encode(scaled, ids, position, copied)
        got = tiny_model.encode(scaled, ids, position, shared)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for own, full in zip(buffers.cache.tensors(), copied.tensors()):
        torch.testing.assert_close(own[:, :, :steps], full[:, :, real : real + steps])


@torch.no_grad()
def test_right_padded_prefill_equals_the_unpadded_one(tiny_model):
    """Padding the context on the right (unobserved zeros) leaves every real output unchanged."""
    from toto.inference.decoding import ContextBuffers, prefill

    patch, batch, variates, real, padded = tiny_model.patch_size, 2, 3, 5, 16
    series = _random_walk((batch, variates, real * patch), seed=53) + 40.0
    observed = torch.rand(series.shape, generator=torch.Generator().manual_seed(54)) > 0.1
    id_patches = torch.tensor([0, 0, 1])[None, :, None].expand(batch, variates, real)
    results = []
    for width in (real, padded):
        extra = (width - real) * patch
        context = ContextBuffers.allocate(tiny_model, batch, variates, padded, torch.float32, "cpu")
        args = (
            torch.nn.functional.pad(series, (0, extra), value=123.0),  # any finite value: it is unobserved
            torch.nn.functional.pad(observed, (0, extra)),
            torch.nn.functional.pad(id_patches, (0, width - real), value=7),
        )
        prefill(tiny_model, context, *args, torch.tensor(real - 1))
        results.append(context)
    unpadded, padded_ = results
    for a, b in zip(unpadded.head, padded_.head):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(unpadded.state.scaler, padded_.state.scaler):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for a, b in zip(unpadded.state.cache.tensors(), padded_.state.cache.tensors()):
        torch.testing.assert_close(a[:, :, :real], b[:, :, :real], rtol=1e-5, atol=1e-6)
    assert unpadded.state.position.item() == padded_.state.position.item() == real
    torch.testing.assert_close(unpadded.state.patch, padded_.state.patch, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_backbone_kv_cache_requires_one_patch_per_call(tiny_model):
    patch = tiny_model.patch_size
    series = _random_walk((1, 2, 6 * patch), seed=51)
    observed = torch.ones_like(series, dtype=torch.bool)
    ids = torch.zeros_like(series, dtype=torch.int)
    cache = tiny_model.allocate_kv_cache(1, 2, series.shape[-1])
    tiny_model(series[..., : 3 * patch], observed[..., : 3 * patch], ids[..., : 3 * patch], kv_cache=cache)
    assert cache.length == 3
    t = 5 * patch
    with pytest.raises(ValueError, match="one patch"):
        tiny_model(series[..., :t], observed[..., :t], ids[..., :t], kv_cache=cache)
    assert cache.length == 3
    t = 4 * patch
    tiny_model(series[..., :t], observed[..., :t], ids[..., :t], kv_cache=cache)
    assert cache.length == 4


# --------------------------------------------------------------------------- 6. TotoForecaster


def _masked(series, observed=None, ids=None, num_exogenous_variables=0):
    if observed is None:
        observed = torch.ones_like(series, dtype=torch.bool)
    if ids is None:
        ids = torch.zeros_like(series, dtype=torch.int)
    return MaskedTimeseries(
        series=series,
        padding_mask=observed,
        id_mask=ids,
        timestamp_seconds=torch.zeros_like(series, dtype=torch.int64),
        time_interval_seconds=torch.full(series.shape[:-1], 60, dtype=torch.int64),
        num_exogenous_variables=num_exogenous_variables,
    )


def _leveled_series(batch=2, variates=3, length=40, seed=61):
    """Each (batch, variate) series sits at its own level, 1000 apart."""
    levels = 1000.0 * torch.arange(batch * variates, dtype=torch.float32).reshape(batch, variates, 1)
    return levels + _random_walk((batch, variates, length), step=0.5, seed=seed)


@pytest.fixture(scope="module")
def forecaster(tiny_model):
    return TotoForecaster(tiny_model)


def test_forecaster_sample_count_and_layout(forecaster):
    series = _leveled_series()
    horizon = 20
    forecast = forecaster.forecast(_masked(series), horizon, num_samples=7, samples_per_batch=3)
    assert forecast.samples.shape == (2, 3, horizon, 7)
    assert forecast.mean.shape == (2, 3, horizon)
    torch.testing.assert_close(forecast.mean, forecast.samples.mean(-1))
    assert torch.isfinite(forecast.samples).all()
    assert forecast.samples[0, 0, 0].unique().numel() == 7  # seven distinct draws
    # Every sample path stays with its own series (rows laid out (sample, series) consistently
    # between the first drawn patch, the expanded state and the output): each draw's nearest level is its own.
    levels = 1000.0 * torch.arange(6, dtype=torch.float32).reshape(2, 3, 1, 1)
    distance = (forecast.samples - levels).abs()
    assert (distance < 500.0).all(), distance.max().item()

    fewer = forecaster.forecast(_masked(series), horizon, num_samples=2)  # fewer than samples_per_batch
    assert fewer.samples.shape == (2, 3, horizon, 2)


@pytest.mark.parametrize("horizon", [1, 5, 16, 20, 37])
def test_forecaster_horizon_shapes(forecaster, horizon):
    series = _leveled_series(length=40)
    mean = forecaster.forecast(_masked(series), horizon).mean
    assert mean.shape == (2, 3, horizon) and torch.isfinite(mean).all()
    sampled = forecaster.forecast(_masked(series), horizon, num_samples=2, samples_per_batch=2)
    assert sampled.samples.shape == (2, 3, horizon, 2)


def test_forecaster_unbatched_series(forecaster):
    series = _leveled_series(batch=1, variates=2, length=35)[0]
    ids = torch.zeros(2, 1, dtype=torch.int)  # time dimension broadcasts
    inputs = MaskedTimeseries(
        series=series,
        padding_mask=torch.ones_like(series, dtype=torch.bool),
        id_mask=ids,
        timestamp_seconds=torch.zeros_like(series, dtype=torch.int64),
        time_interval_seconds=torch.full((2,), 60, dtype=torch.int64),
    )
    mean = forecaster.forecast(inputs, 10).mean
    assert mean.shape == (1, 2, 10)
    batched = forecaster.forecast(_masked(series[None]), 10).mean
    torch.testing.assert_close(mean, batched)
    samples = forecaster.forecast(inputs, 10, num_samples=3).samples
    assert samples.shape == (1, 2, 10, 3)


def test_forecaster_seeding(forecaster):
    inputs = _masked(_leveled_series())
    torch.manual_seed(5)
    a = forecaster.forecast(inputs, 20, num_samples=4, samples_per_batch=3).samples
    torch.manual_seed(5)
    b = forecaster.forecast(inputs, 20, num_samples=4, samples_per_batch=3).samples
    torch.manual_seed(6)
    c = forecaster.forecast(inputs, 20, num_samples=4, samples_per_batch=3).samples
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"prediction_length": 0}, "prediction_length"),
        ({"prediction_length": -1}, "prediction_length"),
        ({"prediction_length": 2.5}, "prediction_length"),
        ({"prediction_length": True}, "prediction_length"),
        ({"prediction_length": 4, "num_samples": 0}, "num_samples"),
        ({"prediction_length": 4, "num_samples": 3, "samples_per_batch": 0}, "samples_per_batch"),
    ],
)
def test_forecaster_invalid_arguments(forecaster, kwargs, name):
    with pytest.raises(ValueError, match=name):
        forecaster.forecast(_masked(_leveled_series()), **kwargs)


def test_forecaster_id_mask_must_be_constant_within_patch(forecaster):
    series = _leveled_series(batch=1, variates=2, length=40)  # left-padded by 8 to 48
    ids = torch.zeros_like(series, dtype=torch.int)
    ids[..., 20:] = 1  # padded index 28: inside the second patch
    with pytest.raises(ValueError, match="id_mask"):
        forecaster.forecast(_masked(series, ids=ids), 4)
    ids = torch.zeros_like(series, dtype=torch.int)
    ids[..., 24:] = 1  # padded index 32: a patch boundary, allowed
    assert forecaster.forecast(_masked(series, ids=ids), 4).mean.shape == (1, 2, 4)


def test_forecaster_context_shorter_than_patch(forecaster):
    series = _leveled_series(length=5)
    forecast = forecaster.forecast(_masked(series), 20, num_samples=3)
    assert forecast.samples.shape == (2, 3, 20, 3)
    assert torch.isfinite(forecast.samples).all()
    assert torch.isfinite(forecaster.forecast(_masked(series), 20).mean).all()


def test_forecaster_constant_series(forecaster):
    series = torch.full((1, 2, 48), 7.25)
    mean = forecaster.forecast(_masked(series), 33).mean
    assert mean.shape == (1, 2, 33) and torch.isfinite(mean).all()
    zeros = torch.zeros(1, 1, 40)
    assert torch.isfinite(forecaster.forecast(_masked(zeros), 20, num_samples=3).samples).all()


# --------------------------------------------------------------------------- 7. CLI


@pytest.fixture(scope="module")
def cli_runs():
    """Start the subprocesses together (each pays torch's import time) and collect their output."""
    commands = {"module": [sys.executable, "-m", "toto.cli", "--version"]}
    script = shutil.which("toto-compiled")
    if script is not None:
        commands["script"] = [script]
    processes = {
        key: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key, cmd in commands.items()
    }
    results = {}
    for key, process in processes.items():
        out, err = process.communicate(timeout=120)
        results[key] = (process.returncode, out, err)
    return results


def test_cli_main_prints_usage(capsys):
    assert cli_main([]) == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower() and "toto-compiled" in out


def test_cli_module_version(cli_runs):
    returncode, out, err = cli_runs["module"]
    assert returncode == 0, err
    assert out.strip() == f"toto-compiled {toto.__version__}"


def test_cli_console_script(cli_runs):
    if "script" not in cli_runs:
        pytest.skip("toto-compiled console script is not on PATH")
    returncode, out, err = cli_runs["script"]
    assert returncode == 0, err
    assert "toto-compiled" in out
