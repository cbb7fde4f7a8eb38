"""Compile health of the decode step (deterministic counts, tiny model) and compiled-vs-eager equality.

Counts run on the cheap health backend (compile_backends.py); the numerics test on inductor.
"""

from __future__ import annotations

import logging

import pytest
import torch
from compile_backends import HEALTH

from toto import MaskedTimeseries, Toto, TotoForecaster
from toto.compile.policy import CompiledFunction, CompileSettings
from toto.compile.diagnostics import snapshot
from toto.inference.capacity import bucket_capacity


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return Toto.load_from_checkpoint(tiny_checkpoint).model


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def masked(length: int, batch: int = 2, variates: int = 3, seed: int = 0) -> MaskedTimeseries:
    gen = torch.Generator().manual_seed(seed)
    series = 5 + torch.randn(batch, variates, length, generator=gen).cumsum(-1)
    return MaskedTimeseries(
        series=series,
        padding_mask=torch.ones_like(series, dtype=torch.bool),
        id_mask=torch.zeros_like(series, dtype=torch.int),
        timestamp_seconds=torch.zeros_like(series, dtype=torch.int),
        time_interval_seconds=torch.full((batch, variates), 60, dtype=torch.int),
    )


class RecompileLimitWatcher(logging.Handler):
    """Collects dynamo's 'hit config.recompile_limit' warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if "recompile_limit" in message or "cache_size_limit" in message:
            self.messages.append(message)


@pytest.fixture
def recompile_limit_warnings():
    watcher = RecompileLimitWatcher()
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(watcher)
    yield watcher.messages
    logger.removeHandler(watcher)


def test_decode_steps_compile_once_and_never_again(model, recompile_limit_warnings):
    forecaster = TotoForecaster(model, torch_compile=True, compile_backend=HEALTH)
    before = snapshot()
    forecaster.forecast(masked(100), 80, num_samples=20, samples_per_batch=8)  # sample step
    forecaster.forecast(masked(100), 80)  # mean step
    warm = snapshot() - before
    assert forecaster.compiled and forecaster.compile_error is None
    assert warm.graph_breaks == 0
    assert warm.graphs == 2  # one graph per step function
    assert warm.recompiles == 0

    with torch.compiler.set_stance("fail_on_recompile"):
        for seed in range(10):
            forecaster.forecast(masked(100, seed=seed), 80, num_samples=20, samples_per_batch=8)
            forecaster.forecast(masked(100, seed=seed), 80)
    steady = snapshot() - before - warm
    assert steady.graphs == 0 and steady.recompiles == 0 and steady.graph_breaks == 0
    assert not recompile_limit_warnings


def test_backtest_with_varying_context_stays_within_buckets(model, recompile_limit_warnings):
    """24 windows, contexts 300..2000: graphs are bounded by the capacity buckets they touch."""
    patch, horizon = model.patch_size, 48
    forecaster = TotoForecaster(model, torch_compile=True, compile_backend=HEALTH)
    contexts = torch.linspace(300, 2000, 24).long().tolist()
    steps = -(-horizon // patch)
    buckets = {bucket_capacity(-(-c // patch) + steps - 1) for c in contexts}
    before = snapshot()
    for i, context in enumerate(contexts):
        forecaster.forecast(masked(context, batch=1, variates=1, seed=i), horizon, num_samples=16, samples_per_batch=16)
    stats = snapshot() - before
    assert len(buckets) == 7  # the bound this test states: ceil(125 / 16) buckets of 16 patches, less empty ones
    assert stats.graph_breaks == 0
    assert 1 <= stats.graphs <= len(buckets)
    assert not recompile_limit_warnings
    # A context's buffers per bucket, not per call; sample rows cache only decoded patches: one set for the horizon.
    assert len(forecaster._buffers) == len(buckets) + 1


@pytest.mark.parametrize("num_samples", [None, 24])
@torch.no_grad()
def test_compiled_equals_eager_at_the_same_seed(model, num_samples):
    inputs = masked(90)
    results = []
    for compiled in (False, True):
        forecaster = TotoForecaster(model, torch_compile=compiled)
        torch.manual_seed(7)
        with torch._inductor.config.patch(fallback_random=True):
            results.append(forecaster.forecast(inputs, 70, num_samples=num_samples, samples_per_batch=10))
    eager, compiled = results
    reference = eager.mean if num_samples is None else eager.samples
    other = compiled.mean if num_samples is None else compiled.samples
    assert ((other - reference).abs().max() / reference.abs().max()).item() <= 1e-5


@torch.no_grad()
def test_directly_compiled_backbone_does_not_storm(model, recompile_limit_warnings):
    """Upstream-style loop: torch.compile(backbone), a KV cache, the series grown by one patch per call."""
    compiled = torch.compile(model, backend=HEALTH)
    patch, context = model.patch_size, 4 * model.patch_size
    inputs = masked(context)
    series, observed, ids = inputs.series, inputs.padding_mask, inputs.id_mask
    cache = model.allocate_kv_cache(2, 3, context + 20 * patch)
    base, loc, scale = compiled(series, observed, ids, kv_cache=cache, scaling_prefix_length=context)  # prefill
    before = snapshot()
    for _ in range(20):
        new = loc[..., -patch:] + scale[..., -patch:] * base.mean[..., -patch:]
        series = torch.cat((series, new), dim=-1)
        observed = torch.cat((observed, torch.ones_like(new, dtype=torch.bool)), dim=-1)
        ids = torch.cat((ids, ids[..., -patch:]), dim=-1)
        base, loc, scale = compiled(series, observed, ids, kv_cache=cache, scaling_prefix_length=context)
    stats = snapshot() - before
    assert cache.length == 24
    assert stats.graphs <= 3
    assert not recompile_limit_warnings


@torch.no_grad()
def test_compiled_prefill_is_one_static_graph_per_bucket(model, recompile_limit_warnings):
    """Prefill compiled with static shapes: contexts in one bucket share its graph; a new bucket adds one."""
    compiled = TotoForecaster(model, torch_compile=True, compile_prefill=True, compile_backend=HEALTH)
    eager = TotoForecaster(model, torch_compile=False)
    before = snapshot()
    for length in (70, 130, 300):  # 5 and 9 patches share bucket 16; 19 patches need bucket 32
        got = compiled.forecast(masked(length), 40)
        torch.testing.assert_close(got.mean, eager.forecast(masked(length), 40).mean, rtol=1e-5, atol=1e-5)
    stats = snapshot() - before
    assert stats.graph_breaks == 0
    assert stats.graphs == 2 * 2  # per bucket: one prefill graph, one mean-step graph
    assert stats.recompiles == 2  # the second bucket recompiles both frames
    assert not recompile_limit_warnings


def test_compile_failure_falls_back_to_eager_once(model):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    forecaster = TotoForecaster(model, torch_compile=True, compile_backend=broken_backend)
    eager = TotoForecaster(model, torch_compile=False)
    with pytest.warns(RuntimeWarning, match="running eagerly") as caught:
        got = forecaster.forecast(masked(50), 40)
    assert len([w for w in caught if "running eagerly" in str(w.message)]) == 1
    assert not forecaster.compiled and "no compiler here" in forecaster.compile_error
    torch.testing.assert_close(got.mean, eager.forecast(masked(50), 40).mean)


def test_compiled_function_reraises_errors_eager_raises_too():
    def always_fails(x):
        raise ValueError("bad input")

    step = CompiledFunction(always_fails, CompileSettings(enabled=True, backend="eager"))
    with pytest.raises(ValueError, match="bad input"):
        step(torch.ones(1))


def test_settings_from_environment(monkeypatch):
    monkeypatch.delenv("TOTO_COMPILE_BACKEND", raising=False)
    monkeypatch.setenv("TOTO_COMPILE", "1")
    monkeypatch.setenv("TOTO_COMPILE_MODE", "max-autotune-no-cudagraphs")
    settings = CompileSettings.resolve(device="cpu")
    assert settings.enabled and settings.mode == "max-autotune-no-cudagraphs"
    assert not CompileSettings.resolve(torch_compile=False).enabled  # arguments win
    monkeypatch.delenv("TOTO_COMPILE_MODE")
    assert CompileSettings.resolve(device="cpu").mode == "default"
    assert CompileSettings.resolve(device="cuda").mode == "reduce-overhead"
    assert CompileSettings.resolve(device="cuda").compile_prefill  # launch-bound there
    assert not CompileSettings.resolve(device="cpu").compile_prefill
    assert CompileSettings.resolve(compile_prefill=True).compile_prefill
    assert CompileSettings.resolve().backend == "inductor"
    monkeypatch.setenv("TOTO_COMPILE_BACKEND", "aot_eager")
    assert CompileSettings.resolve().backend == "aot_eager"
    assert CompileSettings.resolve(compile_backend="eager").backend == "eager"  # arguments win
    monkeypatch.setenv("TOTO_COMPILE_MODE", "fastest")
    with pytest.raises(ValueError, match="TOTO_COMPILE_MODE"):
        CompileSettings.resolve()
    monkeypatch.setenv("TOTO_COMPILE", "maybe")
    with pytest.raises(ValueError, match="TOTO_COMPILE"):
        CompileSettings.resolve(compile_mode="default")


@pytest.fixture
def compile_calls(monkeypatch):
    """``torch.compile`` recording its keyword arguments and compiling nothing."""
    calls: list[dict] = []
    monkeypatch.setattr(torch, "compile", lambda model=None, **options: calls.append(options) or model)
    return calls


def test_health_backend_fixture_sets_only_the_default_backend(compile_calls, health_backend):
    torch.compile(abs, fullgraph=True, dynamic=False)  # the training step's call: no backend named
    torch.compile(abs, backend="inductor")
    assert compile_calls == [{"fullgraph": True, "dynamic": False, "backend": HEALTH}, {"backend": "inductor"}]
