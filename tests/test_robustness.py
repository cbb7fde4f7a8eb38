"""Robustness: bad input gets a clear error, NaN is missing data, and threads, long runs and seeds stay sound.

Tiny model on CPU. The checkpoint cases live in test_loading.py, the CLI's in test_cli*.py.
Compiled runs here check behaviour and counts, not kernels: the health backend (compile_backends.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from compile_backends import HEALTH
from hypothesis import strategies as st

from toto import MaskedTimeseries, TotoPipeline
from toto.compile.policy import CompiledFunction, CompileSettings
from toto.data.util.dataset import fill_missing, masked_timeseries
from toto.compile.diagnostics import snapshot

H = 20  # more than one tiny patch (16), so decode steps run
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


@pytest.fixture(scope="module")
def compiled_pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=True, compile_backend=HEALTH)


def walk(*shape, seed=0, level=10.0):
    return level + torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).cumsum(-1)


def masked(series: torch.Tensor, observed: torch.Tensor | None = None) -> MaskedTimeseries:
    return masked_timeseries(series, observed, time_interval_seconds=60)


# --- shapes, types and values: one clear error each ------------------------------------------------

with_inf = walk(3, 40)
with_inf[1, 7] = -float("inf")


@pytest.mark.parametrize(
    ("context", "options", "error", "parts"),
    [
        ([], {}, ValueError, ["context is empty", "(1, 1, 0)"]),
        (torch.zeros(0), {}, ValueError, ["context is empty"]),
        ([walk(5), torch.zeros(0)], {}, ValueError, ["context[1]", "no values"]),
        (torch.zeros(1, 1, 1, 4), {}, ValueError, ["1, 2 or 3 dimensions", "(1, 1, 1, 4)"]),
        ("abc", {}, TypeError, ["context must be numeric", "str"]),
        (["a", "b"], {}, TypeError, ["context must be numeric", "list"]),
        ({"a": 1.0}, {}, TypeError, ["context must be numeric", "dict"]),
        (torch.tensor([1 + 2j, 3j]), {}, TypeError, ["context must be numeric", "complex"]),
        (torch.tensor([True, False]), {}, TypeError, ["context must be numeric", "bool"]),
        ([1.0, 2.0, float("inf")], {}, ValueError, ["series 0", "±inf at position 2"]),
        (with_inf, {}, ValueError, ["series 1", "±inf at position 7"]),
        ([float("nan")] * 3, {}, ValueError, ["series 0", "no observed value"]),
        ([walk(5), torch.full((4,), float("nan"))], {}, ValueError, ["series 1", "no observed value"]),
        (walk(40), {"prediction_length": 0}, ValueError, ["prediction_length", "0"]),
        (walk(40), {"prediction_length": -3}, ValueError, ["prediction_length", "-3"]),
        (walk(40), {"prediction_length": 2.5}, ValueError, ["prediction_length", "2.5"]),
        (walk(40), {"prediction_length": True}, ValueError, ["prediction_length", "True"]),
        (walk(40), {"num_samples": 0}, ValueError, ["num_samples", "0"]),
        (walk(40), {"num_samples": -1}, ValueError, ["num_samples"]),
        (walk(40), {"samples_per_batch": 0}, ValueError, ["samples_per_batch", "0"]),
    ],
)
def test_bad_input_is_a_clear_error(pipeline, context, options, error, parts):
    call = {"prediction_length": H, "num_samples": 4, "samples_per_batch": 4, **options}
    with pytest.raises(error) as info:
        pipeline.predict(context, **call)
    for part in parts:
        assert part in str(info.value)


@pytest.mark.parametrize(
    ("edit", "parts"),
    [
        (lambda s, m: s.__setitem__((0, 1, 9), float("inf")), ["±inf", "(0, 1, 9)"]),
        (lambda s, m: m.__setitem__((1, 0), False), ["(1, 0)", "no observed value"]),
        (lambda s, m: s.__setitem__((1, 1), float("nan")), ["(1, 1)", "no observed value"]),
    ],
    ids=["inf", "all-masked", "all-nan"],
)
def test_forecaster_names_bad_values(pipeline, edit, parts):
    series, observed = walk(2, 2, 40), torch.ones(2, 2, 40, dtype=torch.bool)
    edit(series, observed)
    with pytest.raises(ValueError) as info:
        pipeline.forecaster.forecast(masked(series, observed), H)
    for part in parts:
        assert part in str(info.value)


# --- missing values ---------------------------------------------------------------------------------


def test_fill_missing_carries_the_last_observed_value():
    nan = float("nan")
    filled, missing = fill_missing(torch.tensor([[nan, 1.0, nan, nan, 3.0, nan], [2.0, nan, 5.0, 6.0, nan, nan]]))
    assert filled.tolist() == [[0.0, 1.0, 1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 5.0, 6.0, 6.0, 6.0]]
    assert missing.tolist() == [[True, False, True, True, False, True], [False, True, False, False, True, True]]


def test_nan_equals_masking_the_step_explicitly(pipeline):
    """NaN is exactly "not observed, fed the last observed value": the documented semantics."""
    series = walk(2, 3, 70, level=3e4)
    gaps = torch.rand(series.shape, generator=torch.Generator().manual_seed(1)) < 0.3
    gaps[..., :5] = True  # leading gap: filled with 0, like left padding
    gaps[..., -1] = False
    with_nan = series.masked_fill(gaps, float("nan"))
    explicit, _ = fill_missing(with_nan)
    forecaster = pipeline.forecaster
    got = forecaster.forecast(masked(with_nan), H).mean
    expected = forecaster.forecast(masked(explicit, ~gaps), H).mean
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # And the gaps matter: treating the filled values as observed gives another forecast.
    assert not torch.equal(got, forecaster.forecast(masked(explicit), H).mean)


def test_context_shorter_than_a_patch_works(pipeline):
    for length in (1, 5, 15):
        samples = pipeline.predict(walk(length), H, num_samples=6, samples_per_batch=4, seed=0)[0].samples
        assert samples.shape == (1, 1, H, 6) and np.isfinite(samples).all()


def test_num_samples_not_a_multiple_of_the_batch(pipeline):
    forecasts = pipeline.predict(walk(2, 40), H, num_samples=37, samples_per_batch=8, seed=0)
    assert [f.samples.shape for f in forecasts] == [(1, 1, H, 37)] * 2


# --- devices and dtypes: moved, not rejected --------------------------------------------------------


@pytest.mark.parametrize(
    "convert",
    [
        lambda s: s.numpy().astype(np.float64),
        lambda s: s.to(torch.float16),
        lambda s: s.to(torch.int64),
        lambda s: s.to(torch.int64).tolist(),
    ],
    ids=["float64-numpy", "float16", "int64", "int-list"],
)
def test_other_dtypes_are_converted(pipeline, convert):
    series = torch.arange(40, dtype=torch.float32) % 7  # small integers: exact in every dtype above
    reference = pipeline.predict(series, H, num_samples=5, samples_per_batch=5, seed=2)[0].samples
    got = pipeline.predict(convert(series), H, num_samples=5, samples_per_batch=5, seed=2)[0].samples
    np.testing.assert_array_equal(got, reference)


def test_masked_timeseries_with_loose_dtypes(pipeline):
    series = walk(1, 2, 40)
    loose = MaskedTimeseries(
        series=series.double(),
        padding_mask=torch.ones(1, 2, 40, dtype=torch.int64),  # 0/1 instead of bool
        id_mask=torch.zeros(1, 2, 40, dtype=torch.int64),
        timestamp_seconds=torch.zeros(1, 2, 40, dtype=torch.int64),
        time_interval_seconds=torch.full((1, 2), 60),
    )
    expected = pipeline.forecaster.forecast(masked(series), H).mean
    torch.testing.assert_close(pipeline.forecaster.forecast(loose, H).mean, expected, rtol=1e-6, atol=0)


# --- compilation ------------------------------------------------------------------------------------


def test_compile_failure_warns_once_and_is_recorded(tiny_checkpoint, pipeline, broken_torch_compile):
    broken = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=True)
    with pytest.warns(RuntimeWarning, match="simulated compiler failure"):
        got = broken.predict(walk(40), H, num_samples=5, samples_per_batch=5, seed=1)[0].samples
    meta = broken.last_run_metadata
    assert meta["torch_compile_requested"] is True and meta["torch_compile_success"] is False
    assert "simulated compiler failure" in meta["torch_compile_error"]
    with warnings.catch_warnings():  # once: the second call is quiet
        warnings.simplefilter("error")
        again = broken.predict(walk(40), H, num_samples=5, samples_per_batch=5, seed=1)[0].samples
    expected = pipeline.predict(walk(40), H, num_samples=5, samples_per_batch=5, seed=1)[0].samples
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(again, expected)


def test_recompile_limit_is_loud_not_silent():
    def affine(x):
        return 2 * x + 1

    torch._dynamo.reset()
    function = CompiledFunction(affine, CompileSettings(enabled=True, backend=HEALTH), dynamic=False)  # a graph per shape
    with torch._dynamo.config.patch(recompile_limit=3):
        with pytest.warns(RuntimeWarning, match="recompile_limit") as caught:
            results = [function(torch.ones(n)) for n in range(1, 8)]
    assert sum("recompile_limit" in str(w.message) for w in caught) == 1  # warned once
    assert all(torch.equal(r, torch.full((n,), 3.0)) for n, r in zip(range(1, 8), results))
    assert function.active and "recompile_limit (3)" in function.error  # compiled shapes keep their graphs
    torch._dynamo.reset()


def test_prefill_past_the_recompile_limit_runs_eagerly_with_one_warning(tiny_checkpoint):
    """A backtest touching more buckets than dynamo allows: new buckets prefill eagerly, loudly, correctly."""
    from toto import Toto, TotoForecaster

    model = Toto.load_from_checkpoint(tiny_checkpoint).model
    torch._dynamo.reset()
    compiled = TotoForecaster(model, torch_compile=True, compile_prefill=True, compile_backend=HEALTH)
    eager = TotoForecaster(model, torch_compile=False)
    lengths = (100, 300, 600, 900)  # context patches 7, 19, 38, 57: four capacity buckets
    with torch._dynamo.config.patch(recompile_limit=2):
        with pytest.warns(RuntimeWarning, match="recompile_limit") as caught:
            results = [compiled.forecast(masked(walk(1, 1, n, seed=n)), H).mean for n in lengths]
    assert sum("prefill" in str(w.message) and "recompile_limit" in str(w.message) for w in caught) == 1
    for n, got in zip(lengths, results):
        torch.testing.assert_close(got, eager.forecast(masked(walk(1, 1, n, seed=n)), H).mean, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_whole_call_compile_failure_warns_once_and_matches_eager(tiny_checkpoint, broken_torch_compile):
    from toto import Toto, TotoForecaster

    model = Toto.load_from_checkpoint(tiny_checkpoint).model
    forecaster = TotoForecaster(model, torch_compile=True, compile_prefill=True)
    eager = TotoForecaster(model, torch_compile=False)
    inputs = masked(walk(1, 1, 100))
    with pytest.warns(RuntimeWarning, match="running eagerly") as caught:
        torch.manual_seed(5)
        got = forecaster.forecast(inputs, H, num_samples=6, samples_per_batch=3).samples
    assert len([w for w in caught if "running eagerly" in str(w.message)]) == 1
    assert not forecaster.compiled and "simulated compiler failure" in forecaster.compile_error
    torch.manual_seed(5)
    torch.testing.assert_close(got, eager.forecast(inputs, H, num_samples=6, samples_per_batch=3).samples)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call stays quiet
        forecaster.forecast(inputs, H, num_samples=6, samples_per_batch=3)


def test_compiled_pipeline_never_recompiles_in_steady_state(compiled_pipeline):
    contexts = [walk(length, seed=length) for length in (200, 180, 230, 240)]  # 12-15 patches + 1 step: bucket 16
    for context in contexts[:1]:
        compiled_pipeline.predict(context, H, num_samples=8, samples_per_batch=8, seed=0)  # warm-up
    before = snapshot()
    with torch.compiler.set_stance("fail_on_recompile"):
        for seed, context in enumerate(contexts * 3):
            forecast = compiled_pipeline.predict(context, H, num_samples=8, samples_per_batch=8, seed=seed)[0]
            assert np.isfinite(forecast.samples).all()
    new = snapshot() - before
    assert (new.graphs, new.recompiles, new.graph_breaks) == (0, 0, 0)
    assert compiled_pipeline.compiled
    # A shape outside the warm-up (capacity bucket 32) is a recompile, and the stance makes it an error.
    with torch.compiler.set_stance("fail_on_recompile"), pytest.raises(RuntimeError, match="fail_on_recompile"):
        compiled_pipeline.predict(walk(400), H, num_samples=8, samples_per_batch=8, seed=0)
    assert compiled_pipeline.compiled  # not swallowed into a silent eager fallback


# --- threads ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["pipeline", "compiled_pipeline"])
def test_concurrent_predict_matches_sequential(request, which):
    shared = request.getfixturevalue(which)
    jobs = [(walk(2, 40 + 9 * i, seed=i), 100 + i) for i in range(8)]

    def run(job):
        context, seed = job
        return np.stack([f.samples for f in shared.predict(context, H, num_samples=12, samples_per_batch=4, seed=seed)])

    expected = [run(job) for job in jobs]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(indices):
        try:
            for i in indices:
                results[i] = run(jobs[i])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(range(k, len(jobs), 4),)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want)


# --- long runs and determinism ----------------------------------------------------------------------


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc (Linux)")
def test_soak_memory_flat_and_no_new_graphs(compiled_pipeline):
    contexts = [walk(length, seed=length) for length in range(150, 260, 10)]
    forecaster = compiled_pipeline.forecaster

    def call(i):
        compiled_pipeline.predict(contexts[i % len(contexts)], H, num_samples=16, samples_per_batch=16, seed=i)

    for i in range(30):  # warm-up: every shape compiled and every buffer allocated
        call(i)
    before, rss, buffers = snapshot(), _rss_mib(), len(forecaster._buffers)
    metadata_keys = set(compiled_pipeline.last_run_metadata)
    for i in range(300):
        call(i)
    grown = _rss_mib() - rss
    new = snapshot() - before
    assert (new.graphs, new.recompiles) == (0, 0)
    assert len(forecaster._buffers) == buffers
    assert set(compiled_pipeline.last_run_metadata) == metadata_keys
    assert grown < 25, f"resident memory grew by {grown:.1f} MiB over 300 calls"


def test_buffer_pool_is_bounded(pipeline):
    from toto.inference.capacity import MAX_BUFFER_SETS

    forecaster = pipeline.forecaster
    for batch in range(1, MAX_BUFFER_SETS + 4):  # each batch size needs its own buffers
        forecaster.forecast(masked(walk(batch, 1, 40)), H)
    assert len(forecaster._buffers) == MAX_BUFFER_SETS


SEEDED_RUN = """
import sys, numpy as np
from toto import TotoPipeline
pipeline = TotoPipeline.from_pretrained(sys.argv[1], device_map="cpu", torch_compile=False)
context = np.sin(np.arange(50) / 3.0) * 4 + 10
np.save(sys.argv[2], pipeline.predict(context, 20, num_samples=16, samples_per_batch=8, seed=11)[0].samples)
"""


def test_same_seed_same_samples_in_a_fresh_process(pipeline, tiny_checkpoint, tmp_path):
    context = np.sin(np.arange(50) / 3.0) * 4 + 10
    here = pipeline.predict(context, 20, num_samples=16, samples_per_batch=8, seed=11)[0].samples
    again = pipeline.predict(context, 20, num_samples=16, samples_per_batch=8, seed=11)[0].samples
    out = tmp_path / "samples.npy"
    subprocess.run(
        [sys.executable, "-c", SEEDED_RUN, str(tiny_checkpoint), str(out)],
        check=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    np.testing.assert_array_equal(here, again)
    np.testing.assert_array_equal(np.load(out), here)


# --- property-based: random shapes, NaN patterns and magnitudes -------------------------------------


@st.composite
def contexts(draw):
    batch = draw(st.integers(1, 3))
    variates = draw(st.integers(1, 3))
    length = draw(st.integers(1, 80))
    magnitude = 10.0 ** draw(st.integers(-6, 9))
    seed = draw(st.integers(0, 2**16))
    nan_fraction = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9]))
    gen = torch.Generator().manual_seed(seed)
    series = magnitude * (1 + 0.05 * torch.randn(batch, variates, length, generator=gen).cumsum(-1))
    gaps = torch.rand(series.shape, generator=gen) < nan_fraction
    gaps[..., -1] &= gaps[..., :-1].all(dim=-1).logical_not()  # keep at least one observed value per series
    return series.masked_fill(gaps, float("nan")), magnitude


# derandomize: the same 40 examples every run, so CI is reproducible; raise max_examples locally to explore.
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=contexts(), horizon=st.integers(1, 40))
def test_any_valid_context_gives_finite_well_shaped_samples(pipeline, case, horizon):
    context, magnitude = case
    forecasts = pipeline.predict(context, horizon, num_samples=6, samples_per_batch=4, seed=0)
    assert len(forecasts) == context.shape[0]
    for forecast in forecasts:
        assert forecast.samples.shape == (1, context.shape[1], horizon, 6)
        assert np.isfinite(forecast.samples).all(), f"non-finite output at magnitude {magnitude:g}"


@pytest.mark.parametrize(
    ("context", "where"),
    [
        (np.array([1.0, 2.0, 1.7e308, 3.0]), "context: the value 1.7e+308 at index (2,)"),
        ([[1.0, 2.0], [-3e39, 4.0]], "context[1]: the value -3e+39 at index (0,)"),  # a list of series
    ],
    ids=["numpy-1d", "list-2d"],
)
def test_float64_beyond_float32_is_an_overflow_not_an_infinity(pipeline, context, where):
    with pytest.raises(ValueError) as info:
        pipeline.predict(context, prediction_length=H, num_samples=4, samples_per_batch=4)
    message = str(info.value)
    assert message.startswith(where) and "overflows torch.float32" in message
    assert "inf" not in message.replace("finfo", "")


def test_forecaster_names_the_overflowing_value_too(pipeline):
    series = torch.full((1, 1, 40), 5.0, dtype=torch.float64)
    series[0, 0, 9] = 1.7e308
    with pytest.raises(ValueError, match=r"inputs.series: the value 1.7e\+308 at index \(0, 0, 9\) overflows torch.float32"):
        pipeline.forecaster.forecast(masked(series), H)
