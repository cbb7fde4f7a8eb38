"""Per-series random streams: the counter-based uniforms, the Student-T draw made from them, and
forecasts whose samples depend on each series' key, not on its batch."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from scipy import stats

from tests.compile_backends import HEALTH
from tests.compile_health import steady_state
from toto import MaskedTimeseries, Toto, TotoForecaster
from toto.inference.keyed_random import MASK, Uniforms, keyed_uniforms, pcg_hash, series_key, series_keys
from toto.model.distribution import MixtureOfStudentT


def reference_pcg(x: int) -> int:
    """The PCG hash in Python's unbounded integers: what the int64 tensor version must equal."""
    state = (x * 747796405 + 2891336453) % 2**32
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) % 2**32
    return (word >> 22) ^ word


def test_pcg_hash_is_exact_32_bit_arithmetic():
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    got = pcg_hash(torch.tensor(values, dtype=torch.long)).tolist()
    assert got == [reference_pcg(v) for v in values]
    # Only the low 32 bits count, so a negative int64 hashes as its two's-complement low word.
    assert pcg_hash(torch.tensor([-1])).item() == reference_pcg(2**32 - 1)


def test_series_key_is_stable_and_distinguishes_its_parts():
    assert series_key(0, "a", 1) == series_key(0, "a", 1)
    assert series_key(0, 5) == series_key(0, np.int64(5))  # an id read by pandas or typed by hand
    keys = {series_key(seed, item, origin) for seed in (0, 1) for item in ("a", "b") for origin in (1, 2)}
    assert len(keys) == 8
    # The key is the digest of the parts' text, so it is the same in every process and release.
    digest = hashlib.blake2b(b"0\x1fa", digest_size=8).digest()
    assert series_key(0, "a") == int.from_bytes(digest, "little", signed=True)


def test_uniforms_are_uniform_and_independent_across_coordinates():
    keys = series_keys(0, [(i,) for i in range(8)])
    u = keyed_uniforms(keys, torch.tensor(3), 500, torch.tensor(2), 2, 16)
    assert u.component.shape == (500, 8, 2, 16)
    for name in ("component", "radius", "angle"):
        values = getattr(u, name).flatten().double().numpy()
        assert stats.kstest(values, "uniform").pvalue > 1e-3, name
    assert torch.allclose(u.radius + u.radius_complement, torch.ones(()), atol=1e-7)
    flat = {name: getattr(u, name).flatten().double().numpy() for name in ("component", "radius", "angle")}
    assert abs(np.corrcoef(flat["component"], flat["angle"])[0, 1]) < 0.01
    assert abs(np.corrcoef(flat["radius"], flat["angle"])[0, 1]) < 0.01
    # Neighbouring samples, series, steps within a patch: no correlation.
    c = u.component.double()
    for a, b in ((c[:-1], c[1:]), (c[:, :-1], c[:, 1:]), (c[..., :-1], c[..., 1:])):
        assert abs(np.corrcoef(a.flatten(), b.flatten())[0, 1]) < 0.01


def test_a_series_stream_ignores_its_neighbours_and_offsets_compose():
    keys = series_keys(7, [("x",), ("y",), ("z",)])
    whole = keyed_uniforms(keys, torch.tensor(0), 10, torch.tensor(4), 3, 8)
    part = keyed_uniforms(keys[[2, 0]], torch.tensor(6), 4, torch.tensor(4), 3, 8)
    for a, b in zip(whole, part):
        assert torch.equal(a[6:, 2], b[:, 0]) and torch.equal(a[6:, 0], b[:, 1])
    other_step = keyed_uniforms(keys, torch.tensor(0), 10, torch.tensor(5), 3, 8)
    assert not torch.equal(whole.component, other_step.component)


@pytest.mark.parametrize("df", [2.01, 3.0, 8.0, 60.0])
def test_keyed_student_t_draws_follow_the_student_t(df):
    mixture = MixtureOfStudentT(torch.full((1, 1), df), torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1))
    u = keyed_uniforms(series_keys(1, [("t",)]), torch.tensor(0), 100_000, torch.tensor(0), 1, 1)
    draws = mixture.sample_from(u).flatten().double().numpy()
    assert np.isfinite(draws).all()
    assert stats.kstest(draws, "t", args=(df,)).pvalue > 1e-3


def test_radius_near_one_keeps_its_digits():
    # p within float32's last step below 1: log p from 1 - p, so the draw is small but not 0.
    mixture = MixtureOfStudentT(torch.full((1,), 4.0), torch.zeros(1), torch.ones(1), torch.zeros(1))
    q = torch.tensor([2.0**-30])
    draw = mixture.sample_from(Uniforms(torch.zeros(1), 1 - q, q, torch.zeros(1)))
    expected = np.sqrt(4.0 * np.expm1(-0.5 * np.log1p(-(2.0**-30))))
    assert draw.item() == pytest.approx(expected, rel=1e-5)


def test_keyed_mixture_draws_match_torch_sampler_in_distribution():
    gen = torch.Generator().manual_seed(0)
    shape = (1, 5)
    mixture = MixtureOfStudentT(
        2.5 + 5 * torch.rand(shape, generator=gen), torch.randn(shape, generator=gen),
        0.2 + torch.rand(shape, generator=gen), torch.randn(shape, generator=gen),
    )
    torch.manual_seed(0)
    reference = mixture.sample((40_000,)).flatten().numpy()
    keyed = mixture.sample_from(keyed_uniforms(series_keys(2, [("m",)]), torch.tensor(0), 40_000, torch.tensor(0), 1, 1))
    assert stats.ks_2samp(reference, keyed.flatten().numpy()).pvalue > 1e-3


# Forecasts -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone(tiny_checkpoint):
    return Toto.load_from_checkpoint(tiny_checkpoint).model


def masked(series: torch.Tensor) -> MaskedTimeseries:
    observed = ~torch.isnan(series)
    return MaskedTimeseries(
        series=torch.nan_to_num(series), padding_mask=observed,
        id_mask=torch.zeros_like(series, dtype=torch.int), timestamp_seconds=torch.zeros_like(series, dtype=torch.int),
        time_interval_seconds=torch.full(series.shape[:2], 60, dtype=torch.int),
    )  # fmt: skip


def ragged(batch: int = 4, variates: int = 2, length: int = 70) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    series = 5 + torch.randn(batch, variates, length, generator=gen).cumsum(-1)
    for row in range(batch):
        series[row, :, : 16 * row] = float("nan")  # each series starts a patch later: left padding
    return series


def keyed_samples(forecaster, series, keys, rows, horizon=40, num_samples=12, per_batch=12):
    forecast = forecaster.forecast(
        masked(series[rows]), horizon, num_samples, per_batch, hide_leading_padding=True, sample_keys=keys[rows]
    )
    return forecast.samples


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("horizon", [16, 40], ids=["one-patch", "three-patches"])
def test_samples_depend_on_the_key_not_the_batch(backbone, compiled, horizon):
    # Compiled: which rows share a batch is dynamo's graph (the health backend); inductor's
    # kernels are checked in test_compiled_keyed_sampling_matches_eager_and_is_steady.
    forecaster = TotoForecaster(backbone, torch_compile=compiled, compile_backend=HEALTH)
    series, keys = ragged(), series_keys(3, [(i,) for i in range(4)])
    whole = keyed_samples(forecaster, series, keys, [0, 1, 2, 3], horizon)
    # Another order, other neighbours, fewer samples per batch, the same equal-length neighbours:
    # the same sample paths, exactly, when the batch's longest series is unchanged.
    reordered = keyed_samples(forecaster, series, keys, [1, 0, 3, 2], horizon, per_batch=5)
    assert torch.equal(reordered[[1, 0, 3, 2]], whole)
    # Alone, a series sits at other positions of the padded batch: equal up to rounding.
    alone = keyed_samples(forecaster, series, keys, [2], horizon, per_batch=4)
    torch.testing.assert_close(alone[0], whole[2], rtol=1e-4, atol=1e-4)
    # Other keys, other paths.
    other = forecaster.forecast(masked(series), horizon, 12, 12, hide_leading_padding=True, sample_keys=keys + 1).samples
    assert not torch.allclose(other, whole)


def test_compiled_keyed_sampling_matches_eager_and_is_steady(backbone):
    series, keys = ragged(), series_keys(4, [(i,) for i in range(4)])
    eager = keyed_samples(TotoForecaster(backbone, torch_compile=False), series, keys, [0, 1, 2, 3])
    compiled = TotoForecaster(backbone, torch_compile=True)
    torch.testing.assert_close(keyed_samples(compiled, series, keys, [0, 1, 2, 3]), eager, rtol=1e-4, atol=1e-4)
    counts = steady_state([
        lambda: keyed_samples(compiled, series, keys, [0, 1, 2, 3]),
        lambda: keyed_samples(compiled, series, keys, [3, 2, 1, 0], horizon=16),
    ])  # fmt: skip
    assert (counts.graph_breaks, counts.recompiles, counts.graphs) == (0, 0, 0)


def test_keyed_samples_follow_the_same_distribution_as_torch_draws(backbone):
    forecaster = TotoForecaster(backbone, torch_compile=False)
    series = ragged(batch=1)
    torch.manual_seed(0)
    plain = forecaster.forecast(masked(series), 40, 2000, 500).samples
    keyed = forecaster.forecast(masked(series), 40, 2000, 500, sample_keys=series_keys(0, [("a",)])).samples
    for step in (0, 17, 39):  # the first patch, a decoded one, the last step
        assert stats.ks_2samp(plain[0, 0, step].numpy(), keyed[0, 0, step].numpy()).pvalue > 1e-3, step


def test_bad_sample_keys_are_named(backbone):
    forecaster = TotoForecaster(backbone, torch_compile=False)
    inputs = masked(ragged(batch=2))
    with pytest.raises(ValueError, match=r"sample_keys must be an int64 tensor of shape \(2,\)"):
        forecaster.forecast(inputs, 16, 4, 4, sample_keys=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="sample_keys must be an int64"):
        forecaster.forecast(inputs, 16, 4, 4, sample_keys=torch.zeros(2))
    with pytest.raises(ValueError, match="sample_keys needs use_kv_cache=True"):
        forecaster.forecast(inputs, 16, 4, 4, use_kv_cache=False, sample_keys=torch.zeros(2, dtype=torch.long))


def test_mask_keeps_keys_to_32_bit_words():
    key = torch.tensor([-(2**63), 2**63 - 1, -1])
    low, high = key & MASK, (key >> 32) & MASK
    assert ((low >= 0) & (low <= MASK) & (high >= 0) & (high <= MASK)).all()
    assert high.tolist() == [2**31, 2**31 - 1, MASK]
