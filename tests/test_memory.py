"""Refusing forecasts that cannot fit in memory, and shrinking the sample batch of those that fit smaller (``toto.inference.memory``)."""

from __future__ import annotations

import os
import platform
import re
import resource
import time
import warnings

import pytest
import torch

from toto import TotoPipeline
from toto.data.util.dataset import MaskedTimeseries
from toto.inference import memory
from toto.inference.forecaster import TotoForecaster
from toto.inference.memory import (
    available_bytes,
    check_memory,
    estimate_memory,
    fit_samples_per_batch,
    format_bytes,
    pooled_bytes,
)
from toto.model.toto import Toto

GiB = 2**30
CPU = torch.device("cpu")
HUMAN_BYTES = r"\d+(\.\d+)? (B|KiB|MiB|GiB|TiB|PiB|EiB|ZiB|YiB)"

# The tiny test model (tests/checkpoints.py): patch 16, embed 32 over 4 heads (head_dim 8),
# 4 layers of which every second is space-wise, so 2 time-wise layers; float32 weights.
PATCH, HEADS, HEAD_DIM, TIME_LAYERS, EMBED = 16, 4, 8, 2, 32


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint) -> TotoPipeline:
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    backbone = Toto.load_from_checkpoint(tiny_checkpoint).model
    config = backbone.config
    assert (config.patch_size, config.num_heads, config.head_dim) == (PATCH, HEADS, HEAD_DIM)
    assert backbone.transformer.num_time_layers == TIME_LAYERS
    return backbone


def request(**overrides) -> dict:
    """A small, ordinary forecast's ``check_memory`` arguments."""
    args = dict(
        batch=2, variates=3, context_patches=5, prediction_length=40, num_samples=7, samples_per_batch=4,
        dtype=torch.float32, device=CPU,
    )
    return {**args, **overrides}


def estimate(model, **overrides):
    """The estimate at one sample row per series, unless ``samples_per_batch`` is given."""
    args = request(**overrides)
    del args["device"]
    if "samples_per_batch" not in overrides:
        del args["samples_per_batch"]
    return estimate_memory(model, **args)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _refusal(call) -> str:
    """Run ``call``, expect a ValueError, and check it came fast and without a big allocation."""
    rss_before, start = _peak_rss_bytes(), time.perf_counter()
    with pytest.raises(ValueError) as info:
        call()
    assert time.perf_counter() - start < 5
    assert _peak_rss_bytes() - rss_before < 500 * 2**20
    return str(info.value)


def _assert_sizes_named(message: str) -> None:
    needed = re.search(f"needs at least ({HUMAN_BYTES})", message)
    available = re.search(f"only ({HUMAN_BYTES}) is available on cpu", message)
    assert needed and available, message


# --- through the pipeline (needs check_memory wired into TotoForecaster._forecast) ---


def test_pipeline_refuses_a_huge_prediction_length(pipeline):
    message = _refusal(lambda: pipeline.predict(torch.randn(100), prediction_length=10**9))
    assert message.startswith("prediction_length=1000000000:"), message
    _assert_sizes_named(message)


def test_pipeline_refuses_huge_num_samples(pipeline):
    message = _refusal(lambda: pipeline.predict(torch.randn(100), prediction_length=10, num_samples=10**12))
    assert message.startswith("num_samples=1000000000000:"), message
    _assert_sizes_named(message)


def test_pipeline_still_forecasts_after_a_refusal(pipeline):
    with pytest.raises(ValueError):
        pipeline.predict(torch.randn(100), prediction_length=10**9)
    (forecast,) = pipeline.predict(torch.randn(100), prediction_length=20, num_samples=8, samples_per_batch=4)
    assert forecast.samples.shape == (1, 1, 20, 8)


# --- check_memory itself ---


def test_an_ordinary_request_passes(model):
    assert check_memory(model, **request()) is None
    assert check_memory(model, **request(num_samples=None)) is None
    big_but_fine = request(batch=64, context_patches=256, prediction_length=1024, num_samples=256)
    assert check_memory(model, **big_but_fine) is None


def test_absurd_requests_are_refused_fast_without_overflow(model):
    for huge in ({"prediction_length": 10**400}, {"num_samples": 10**400}, {"batch": 10**30}):
        message = _refusal(lambda: check_memory(model, **request(**huge)))
        assert "needs at least about 2^" in message or "YiB" in message, message


def test_the_argument_that_must_shrink_is_named(model, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: GiB)
    horizon = str(_error(model, prediction_length=10**8, num_samples=None))
    assert horizon.startswith("prediction_length=100000000: this forecast needs at least")
    assert "only 1 GiB is available on cpu" in horizon
    samples = str(_error(model, prediction_length=10, num_samples=10**9))
    assert samples.startswith("num_samples=1000000000:") and "samples could fit" in samples
    # A 10**9-step horizon is at fault even with many samples: fewer samples would not do.
    both = str(_error(model, prediction_length=10**9, num_samples=4096))
    assert both.startswith("prediction_length=1000000000:") and "even one sample path needs" in both
    context = str(_error(model, batch=10**6, context_patches=1000, prediction_length=16, num_samples=None))
    assert context.startswith("the context (1000000 series x 3 variates x 1000 patches):")


def _error(model, **overrides) -> ValueError:
    with pytest.raises(ValueError) as info:
        check_memory(model, **request(**overrides))
    return info.value


def test_samples_that_could_fit_are_counted_exactly(model, monkeypatch):
    fits = estimate(model, num_samples=10)
    monkeypatch.setattr(memory, "available_bytes", lambda device: fits.total)
    check_memory(model, **request(num_samples=10))  # exactly enough is enough
    assert "at most 10 samples could fit" in str(_error(model, num_samples=11))


def test_reusable_bytes_count_as_available(model, monkeypatch):
    needed = estimate(model).total
    monkeypatch.setattr(memory, "available_bytes", lambda device: needed - 100)
    _error(model)
    check_memory(model, **request(), reusable_bytes=100)


def test_unknown_device_memory_is_not_checked(model):
    assert available_bytes("meta") is None
    check_memory(model, **request(prediction_length=10**400, device=torch.device("meta")))


# --- the estimate, against the formula worked out by hand ---


def test_kv_cache_and_outputs_of_a_small_sampled_forecast(model):
    # 40 steps -> 3 patches; the context's capacity = 5 context + 3 - 1 = 7 patches, rounded up
    # to 16; the sample rows cache their 2 decoded patches (a power of two: 2 slots).
    rows = 2 * 3
    kv_per_slot = 2 * TIME_LAYERS * rows * HEADS * HEAD_DIM * 4  # keys and values, float32
    assert kv_per_slot == 3072
    got = estimate(model)
    assert got.cache_bytes == (16 + 2) * kv_per_slot
    assert got.output_bytes == 2 * rows * 7 * 48 * 4  # 7 samples over 48 padded steps, twice
    assert got.total == 55296 + 16128


def test_mean_path_decodes_in_the_context_buffers(model):
    got = estimate(model, num_samples=None)
    assert got.cache_bytes == 16 * 3072
    assert got.output_bytes == 2 * 6 * 48 * 4


def test_capacity_rounds_up_to_the_next_bucket(model):
    # 10 context + 8 steps - 1 = 17 patches -> 32, and 7 decoded patches -> 8 in the sample rows;
    # a single step needs no sample buffers.
    per_slot = 2 * TIME_LAYERS * 6 * HEADS * HEAD_DIM * 4
    assert estimate(model, context_patches=10, prediction_length=8 * PATCH).cache_bytes == (32 + 8) * per_slot
    assert estimate(model, context_patches=10, prediction_length=PATCH).cache_bytes == 16 * per_slot


def test_without_a_cache_one_layer_of_keys_and_values_is_counted(model):
    # The last step re-encodes 5 + 3 - 1 = 7 patches: keys and values, embed 32, at 2 bytes.
    assert estimate(model, use_kv_cache=False).cache_bytes == 2 * 6 * 7 * EMBED * 2


def test_huge_numbers_stay_exact_ints(model):
    got = estimate(model, prediction_length=10**30, num_samples=10**20)
    steps = -(-(10**30) // PATCH)
    assert got.output_bytes == 2 * 6 * 10**20 * steps * PATCH * 4


def test_every_sample_row_of_a_batch_is_counted(model):
    # As above, plus each of the batch's sample rows (4 per series) caching its 2 decoded patches.
    per_slot = 3072
    assert estimate(model, samples_per_batch=4).cache_bytes == (16 + 4 * 2) * per_slot
    assert estimate(model, samples_per_batch=50).cache_bytes == (16 + 7 * 2) * per_slot  # no more rows than samples
    assert estimate(model, samples_per_batch=4).output_bytes == estimate(model).output_bytes  # all paths, whatever the batch
    assert estimate(model, num_samples=None, samples_per_batch=4).cache_bytes == 16 * per_slot  # no sample rows
    # A single step only draws: no sample rows' cache.
    assert estimate(model, prediction_length=PATCH, samples_per_batch=4).cache_bytes == 16 * per_slot
    # Without a cache, a sample batch's 4 x 6 rows each re-encode 7 patches.
    assert estimate(model, use_kv_cache=False, samples_per_batch=4).cache_bytes == 2 * 4 * 6 * 7 * EMBED * 2


# --- sizing the batch that will run ---


def _fit(model, **overrides) -> int:
    args = request(**overrides)
    return fit_samples_per_batch(model, **args)


def test_a_batch_that_fits_is_kept(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _fit(model, samples_per_batch=4) == 4
        assert _fit(model, samples_per_batch=100) == 7  # never more rows than samples
        assert _fit(model, num_samples=None, samples_per_batch=100) == 100


def test_a_batch_that_does_not_fit_shrinks_to_the_largest_that_does(model, monkeypatch):
    fits_five = estimate(model, num_samples=64, samples_per_batch=5).total
    assert fits_five < estimate(model, num_samples=64, samples_per_batch=6).total
    monkeypatch.setattr(memory, "available_bytes", lambda device: fits_five)
    with pytest.warns(RuntimeWarning, match=r"samples_per_batch=32 would need .* using samples_per_batch=5$"):
        assert _fit(model, num_samples=64, samples_per_batch=32) == 5
    # One byte short of 5 rows: 4.
    monkeypatch.setattr(memory, "available_bytes", lambda device: fits_five - 1)
    with pytest.warns(RuntimeWarning, match="using samples_per_batch=4"):
        assert _fit(model, num_samples=64, samples_per_batch=32) == 4


def test_a_huge_horizon_that_fits_one_row_but_not_the_batch_is_shrunk(model, monkeypatch):
    # The measured report: --prediction-length 1000000 passed the one-row bound, then the
    # real batch asked for far more than the machine had.
    huge = {"batch": 1, "variates": 1, "prediction_length": 10**6, "num_samples": 256}
    monkeypatch.setattr(memory, "available_bytes", lambda device: 4 * GiB)
    check_memory(model, **request(**huge, samples_per_batch=256))  # the one-row bound fits ...
    assert estimate(model, **huge, samples_per_batch=256).total > 4 * GiB  # ... the batch asked for does not
    with pytest.warns(RuntimeWarning):
        used = _fit(model, **huge, samples_per_batch=256)
    assert 1 < used < 256
    assert estimate(model, **huge, samples_per_batch=used).total <= 4 * GiB
    assert estimate(model, **huge, samples_per_batch=used + 1).total > 4 * GiB


def test_refused_when_even_one_row_does_not_fit(model, monkeypatch):
    one_row = estimate(model, num_samples=64).total
    monkeypatch.setattr(memory, "available_bytes", lambda device: one_row - 1)
    with pytest.raises(ValueError, match="even at samples_per_batch=1") as info:
        _fit(model, num_samples=64, samples_per_batch=16)
    _assert_sizes_named(str(info.value))


def test_absurd_batches_are_sized_fast(model, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: GiB // 2)
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning):
        used = _fit(model, num_samples=10**5, samples_per_batch=10**300)
    assert time.perf_counter() - start < 1
    assert estimate(model, num_samples=10**5, samples_per_batch=used).total <= GiB // 2
    assert estimate(model, num_samples=10**5, samples_per_batch=used + 1).total > GiB // 2


# --- through TotoForecaster.forecast ---

H, SAMPLES = 48, 8  # 3 patches: 2 decoded steps per sample batch


def _series(batch: int = 2) -> MaskedTimeseries:
    series = torch.randn(batch, 1, 64, generator=torch.Generator().manual_seed(0)).cumsum(-1)
    return MaskedTimeseries(
        series=series,
        padding_mask=torch.ones_like(series, dtype=torch.bool),
        id_mask=torch.zeros_like(series, dtype=torch.int),
        timestamp_seconds=torch.zeros_like(series, dtype=torch.int64),
        time_interval_seconds=torch.full(series.shape[:-1], 60, dtype=torch.int64),
    )


def _forecast_estimate(model, samples_per_batch: int, num_samples: int | None = SAMPLES) -> memory.MemoryEstimate:
    return estimate_memory(
        model, batch=2, variates=1, context_patches=4, prediction_length=H, num_samples=num_samples,
        dtype=torch.float32, samples_per_batch=samples_per_batch,
    )


def _batches_run(forecaster, **kwargs) -> tuple:
    """The forecast and how many sample batches it ran (progress counts decoded patches per batch)."""
    totals = []
    forecast = forecaster.forecast(_series(), H, progress=lambda done, total: totals.append(total), **kwargs)
    return forecast, totals[-1] // 2


def test_forecast_shrinks_the_batch_to_fit(model, monkeypatch):
    keys = torch.tensor([11, 12])
    forecaster = TotoForecaster(model, torch_compile=False)
    reference, batches = _batches_run(forecaster, num_samples=SAMPLES, samples_per_batch=SAMPLES, sample_keys=keys)
    assert (forecaster.last_samples_per_batch, batches) == (SAMPLES, 1)
    forecaster.clear_buffers()  # pooled buffers would count as available
    monkeypatch.setattr(memory, "available_bytes", lambda device: _forecast_estimate(model, 3).total)
    with pytest.warns(RuntimeWarning, match="using samples_per_batch=3"):
        shrunk, batches = _batches_run(forecaster, num_samples=SAMPLES, samples_per_batch=SAMPLES, sample_keys=keys)
    assert (forecaster.last_samples_per_batch, batches) == (3, 3)  # 8 samples, 3 at a time
    assert shrunk.samples.shape == (2, 1, H, SAMPLES)
    # Keyed samples do not depend on the batching: the same paths as the unshrunk call.
    torch.testing.assert_close(shrunk.samples, reference.samples, rtol=1e-4, atol=1e-4)


def test_forecast_is_refused_when_one_row_does_not_fit(model, monkeypatch):
    forecaster = TotoForecaster(model, torch_compile=False)
    forecaster.forecast(_series(), H, num_samples=2, samples_per_batch=2)
    assert forecaster.last_samples_per_batch == 2
    forecaster.clear_buffers()
    monkeypatch.setattr(memory, "available_bytes", lambda device: _forecast_estimate(model, 1).total - 1)
    with pytest.raises(ValueError, match="needs at least"):
        forecaster.forecast(_series(), H, num_samples=SAMPLES, samples_per_batch=4)
    assert forecaster.last_samples_per_batch is None


@pytest.mark.parametrize("num_samples", [None, SAMPLES])
def test_the_estimate_never_exceeds_what_a_forecast_holds(model, num_samples):
    # A lower bound: the buffers a real forecast keeps hold at least the estimated cache.
    forecaster = TotoForecaster(model, torch_compile=False)
    forecast = forecaster.forecast(_series(), H, num_samples=num_samples, samples_per_batch=4)
    expected = _forecast_estimate(model, 4, num_samples)
    assert pooled_bytes(forecaster._buffers.values()) >= expected.cache_bytes
    paths = forecast.mean if num_samples is None else forecast.samples
    assert memory.OUTPUT_COPIES * paths.numel() * paths.element_size() >= expected.output_bytes
    assert forecaster.last_samples_per_batch == (None if num_samples is None else 4)


# --- reading free memory ---


def _meminfo_bytes(name: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def test_available_cpu_memory_is_positive_and_at_most_the_total():
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if os.path.exists("/proc/meminfo"):
        total = _meminfo_bytes("MemTotal") + _meminfo_bytes("SwapTotal")
    assert 0 < available_bytes(CPU) <= total


def test_available_cpu_memory_falls_back_to_sysconf(tmp_path):
    nowhere = memory.LimitFiles(*(tmp_path / name for name in ("meminfo", "status", "cgroup", "fs")))
    assert 0 < available_bytes("cpu", nowhere) <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_available_cuda_memory_is_positive_and_at_most_the_total():
    _, total = torch.cuda.mem_get_info()
    assert 0 < available_bytes("cuda") <= total


def test_pooled_bytes_sums_every_buffer():
    class Buffers:
        def tensors(self):
            return [torch.zeros(10), torch.zeros(3, dtype=torch.float64), torch.zeros((), dtype=torch.long)]

    assert pooled_bytes([Buffers(), Buffers()]) == 2 * (40 + 24 + 8)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (20 * GiB + GiB // 8, "20.1 GiB"),
        (999 * GiB + GiB // 2, "1000 GiB"), (3 * 2**40 + 2**40 * 7 // 10, "3.7 TiB"), (2**1000, "about 2^1000 B"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text
