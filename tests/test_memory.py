"""Refusing forecasts that cannot fit in memory (``toto.inference.memory``), before allocating."""

from __future__ import annotations

import os
import platform
import re
import resource
import time

import pytest
import torch

from toto import TotoPipeline
from toto.inference import memory
from toto.inference.memory import available_bytes, check_memory, estimate_memory, format_bytes, pooled_bytes
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
    args = request(**overrides)
    del args["samples_per_batch"], args["device"]
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


def test_available_cpu_memory_falls_back_to_sysconf(monkeypatch):
    monkeypatch.setattr(memory, "_read_meminfo", lambda: {})
    assert 0 < available_bytes("cpu") <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


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
