"""TotoPipeline: input forms, layouts, seeding, quantiles, options and OOM back-off (tiny model, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toto import TotoForecast, TotoPipeline
from toto.pipeline.inputs import normalize_context

H = 20  # horizon: more than one tiny patch (16), so decode steps run


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


def walk(*shape, seed=0):
    return 10 + torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).cumsum(-1)


@pytest.mark.parametrize(
    ("make", "batch", "variates"),
    [
        (lambda: walk(50), 1, 1),
        (lambda: walk(50).tolist(), 1, 1),
        (lambda: walk(50).numpy(), 1, 1),
        (lambda: walk(3, 50), 3, 1),
        (lambda: [walk(50), walk(30, seed=1), walk(7, seed=2)], 3, 1),
        (lambda: walk(2, 3, 40), 2, 3),
    ],
    ids=["1d-tensor", "1d-list", "1d-numpy", "2d-batch", "ragged-list", "3d-multivariate"],
)
def test_predict_shapes_for_every_input_form(pipeline, make, batch, variates):
    forecasts = pipeline.predict(make(), H, num_samples=7, samples_per_batch=3, seed=0)
    assert len(forecasts) == batch
    for forecast in forecasts:
        assert isinstance(forecast, TotoForecast)
        assert forecast.samples.shape == (1, variates, H, 7)
        assert np.isfinite(forecast.samples).all()
        # Chronos layout: (num_samples, prediction_length), per variate when multivariate.
        expected = forecast.samples[0, 0].T if variates == 1 else forecast.samples[0].transpose(0, 2, 1)
        np.testing.assert_array_equal(forecast.numpy(), expected)


def test_ragged_context_is_left_padded_and_masked():
    series, observed = normalize_context([torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5.0])])
    assert series.shape == observed.shape == (2, 1, 3)
    assert observed[1, 0].tolist() == [False, False, True] and series[1, 0, 2] == 5.0
    assert torch.isnan(series[1, 0, :2]).all()  # left padding is missing data; the forecaster fills it
    series, observed = normalize_context([1.0, float("nan"), 2.0])
    assert observed[0, 0].tolist() == [True, False, True] and torch.isnan(series[0, 0, 1])


@pytest.mark.parametrize(
    ("context", "error", "match"),
    [
        ("abc", TypeError, "context must be numeric"),
        (torch.zeros(1, 1, 1, 4), ValueError, "1, 2 or 3 dimensions"),
        (torch.zeros(0), ValueError, "empty"),
        ([1.0, float("inf")], ValueError, "inf"),
        ([float("nan")] * 3, ValueError, "no observed value"),
    ],
)
def test_bad_context(context, error, match):
    with pytest.raises(error, match=match):
        normalize_context(context)


def test_seed_reproducible_and_leaves_global_rng_alone(pipeline):
    state = torch.random.get_rng_state()
    a = pipeline.predict(walk(40), H, num_samples=5, samples_per_batch=5, seed=3)[0].samples
    b = pipeline.predict(walk(40), H, num_samples=5, samples_per_batch=5, seed=3)[0].samples
    c = pipeline.predict(walk(40), H, num_samples=5, samples_per_batch=5, seed=4)[0].samples
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert torch.equal(state, torch.random.get_rng_state())


def test_predict_quantiles_match_samples(pipeline):
    levels = (0.1, 0.5, 0.9)
    quantiles, mean = pipeline.predict_quantiles(walk(2, 40), H, levels, num_samples=64, samples_per_batch=32, seed=5)
    assert quantiles.shape == (2, H, 3) and mean.shape == (2, H)
    assert (quantiles[..., 1:] >= quantiles[..., :-1]).all()
    samples = np.concatenate([f.samples for f in pipeline.predict(walk(2, 40), H, 64, 32, seed=5)])[:, 0]
    np.testing.assert_allclose(quantiles.numpy(), np.moveaxis(np.quantile(samples, levels, axis=-1), 0, -1), rtol=1e-5)
    np.testing.assert_allclose(mean.numpy(), samples.mean(-1), rtol=1e-5)


def test_predict_quantiles_of_more_than_2_24_sample_values(pipeline, monkeypatch):
    """torch.quantile refuses inputs of more than 2**24 elements; a large backtest call makes that many."""
    paths = np.random.default_rng(0).standard_normal((1, 1, 4, 2**22 + 1)).astype(np.float32)
    monkeypatch.setattr(pipeline, "predict", lambda *args, **kwargs: [TotoForecast(samples=paths)])
    quantiles, _ = pipeline.predict_quantiles(walk(40), 4, (0.1, 0.9), num_samples=paths.shape[-1])
    expected = np.moveaxis(np.quantile(paths[0, 0], (0.1, 0.9), axis=-1), 0, -1)
    np.testing.assert_allclose(quantiles[0].numpy(), expected, rtol=1e-6)


def test_options(pipeline, tiny_checkpoint, monkeypatch):
    pipeline.predict(walk(40), H, num_samples=3, samples_per_batch=3, temperature=0.5, top_k=3, top_p=0.9)
    with pytest.raises(TypeError, match="beam_width"):
        pipeline.predict(walk(40), H, num_samples=3, beam_width=2)
    with pytest.raises(ValueError, match="num_samples"):
        pipeline.predict(walk(40), H, num_samples=0)
    with pytest.raises(TypeError, match="device_mapp"):
        TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", device_mapp="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cuda")
    assert TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", compile_model=True).compile_settings.enabled
    with pytest.raises(ValueError, match="contradicts"):
        TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False, compile_model=True)
    monkeypatch.setenv("TOTO_COMPILE", "1")
    assert TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu").compile_settings.enabled
    monkeypatch.setenv("TOTO_COMPILE", "0")
    assert not TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu").compile_settings.enabled


def test_metadata(pipeline):
    pipeline.predict(walk(2, 40), H, num_samples=10, samples_per_batch=4)
    meta = pipeline.last_run_metadata
    assert meta["num_samples_requested"] == meta["num_samples_used"] == 10
    assert meta["samples_per_batch_requested"] == meta["samples_per_batch_used"] == 4
    assert meta["batch_size"] == 2 and meta["torch_dtype"] == "torch.float32"
    assert meta["torch_compile_requested"] is False and meta["torch_compile_success"] is False
    assert set(meta["compile_stats"]) == {"graph_breaks", "graphs", "recompiles", "cudagraph_skips"}


@pytest.mark.parametrize(
    ("failures", "expected_batch", "expected_samples"),
    [(1, 256, 1024), (2, 128, 1024), (4, 32, 1024), (5, 32, 512)],
)
def test_oom_backoff(tiny_checkpoint, monkeypatch, failures, expected_batch, expected_samples):
    pipeline = TotoPipeline.from_pretrained(
        str(tiny_checkpoint), device_map="cpu", torch_compile=False, max_oom_retries=5, min_samples_per_batch=32, min_num_samples=512
    )
    real = pipeline.forecaster.forecast
    calls = []

    def flaky(inputs, prediction_length, num_samples, samples_per_batch, **kwargs):
        calls.append((num_samples, samples_per_batch))
        if len(calls) <= failures:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(inputs, prediction_length, num_samples, samples_per_batch, **kwargs)

    monkeypatch.setattr(pipeline.forecaster, "forecast", flaky)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        forecasts = pipeline.predict(walk(40), 4, num_samples=1024, samples_per_batch=512)
    assert forecasts[0].samples.shape[-1] == expected_samples
    meta = pipeline.last_run_metadata
    assert (meta["samples_per_batch_used"], meta["num_samples_used"]) == (expected_batch, expected_samples)
    assert meta["oom_retries"] == failures


def test_oom_gives_up_after_max_retries(tiny_checkpoint, monkeypatch):
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", max_oom_retries=1)

    def always_oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(pipeline.forecaster, "forecast", always_oom)
    with pytest.raises(torch.cuda.OutOfMemoryError), pytest.warns(RuntimeWarning):
        pipeline.predict(walk(40), 4, num_samples=1024, samples_per_batch=512)


def test_unload(tiny_checkpoint):
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu")
    pipeline.predict(walk(40), H, num_samples=2, samples_per_batch=2)
    pipeline.unload()
    assert all(p.device.type == "meta" for p in pipeline.model.parameters())
    assert not pipeline.forecaster._buffers


@pytest.mark.parametrize(
    ("option", "match"),
    [({"warmup_sequence": -1}, "warmup_sequence"), ({"max_oom_retries": -1}, "max_oom_retries"),
     ({"min_num_samples": 0}, "min_num_samples"), ({"amp_dtype": torch.float64}, "amp_dtype")],
)
def test_bad_pipeline_options(tiny_checkpoint, option, match):
    with pytest.raises(ValueError, match=match):
        TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", **option)


def test_warmup_runs_a_forecast_at_load(tiny_checkpoint):
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", warmup_sequence=100)
    assert pipeline.last_run_metadata["num_samples_used"] == 512  # the warm-up call


# --- batches of series -----------------------------------------------------------------------


def test_batches_are_length_sorted_and_cover_every_series():
    from toto.pipeline.batching import length_sorted_batches, trim_to_longest

    observed = torch.zeros(5, 2, 10, dtype=torch.bool)
    for item, start in enumerate([6, 0, 8, 3, 6]):
        observed[item, item % 2, start:] = True  # the context starts at the first variate observed
    batches = length_sorted_batches(observed, 2)
    assert [b.tolist() for b in batches] == [[1, 3], [0, 4], [2]]
    series = torch.arange(50.0).reshape(5, 10)[:, None].expand(5, 2, 10)
    trimmed, mask = trim_to_longest(series[batches[1]], observed[batches[1]])
    assert trimmed.shape[-1] == 4 and mask.any(dim=1).all()  # both start at step 6: nothing left to pad


def test_each_batch_of_one_is_the_series_forecast_alone(pipeline):
    """Batch i is seeded with seed + i, longest first, and the output is back in input order."""
    patch = pipeline.forecaster.patch_size
    lengths = [2 * patch + 5, 5 * patch, patch + 1]
    context = [walk(n, seed=n) for n in lengths]
    got = pipeline.predict(context, patch + 3, num_samples=6, samples_per_batch=6, seed=11, batch_size=1)
    assert pipeline.last_run_metadata["num_batches"] == 3 and pipeline.last_run_metadata["batch_size"] == 1
    order = sorted(range(3), key=lambda i: -lengths[i])  # batch number of each series
    for i, series in enumerate(context):
        alone = pipeline.predict(series, patch + 3, num_samples=6, samples_per_batch=6, seed=11 + order.index(i))
        np.testing.assert_array_equal(got[i].samples, alone[0].samples)


def test_a_short_series_is_not_changed_by_a_long_one(pipeline):
    """Leading padding is hidden: a short series' forecast (its sample mean, many samples)
    is the same next to a long series as alone, up to Monte-Carlo error."""
    patch = pipeline.forecaster.patch_size
    short, long = walk(patch + 5, seed=1), 10.0 + walk(8 * patch, seed=2)
    n = 2000
    alone = pipeline.predict(short, patch, num_samples=n, samples_per_batch=n, seed=1)[0].samples[0, 0]
    together = pipeline.predict([short, long], patch, num_samples=n, samples_per_batch=n, seed=2)[0].samples[0, 0]
    spread = np.sqrt(alone.var(-1) / n + together.var(-1) / n)
    assert (np.abs(alone.mean(-1) - together.mean(-1)) <= 5 * spread).all()


def test_batch_progress_counts_over_all_batches(pipeline):
    patch = pipeline.forecaster.patch_size
    seen = []
    context = [walk(n, seed=n) for n in (patch + 2, 3 * patch, 2 * patch)]
    pipeline.predict(context, 3 * patch, num_samples=4, samples_per_batch=2, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and all(t == seen[0][1] for _, t in seen)
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_batch_size_must_be_a_positive_int(pipeline, bad):
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.predict(torch.ones(40), 8, num_samples=2, batch_size=bad)


def test_oom_halves_batch_size_before_cutting_samples(tiny_checkpoint, monkeypatch):
    """With samples_per_batch at its minimum, an OOM splits the batches of series (speed only)
    before it cuts num_samples (quality); the result is that of the smaller batch_size."""
    pipeline = TotoPipeline.from_pretrained(
        str(tiny_checkpoint), device_map="cpu", torch_compile=False, min_samples_per_batch=8, min_num_samples=4
    )
    context = [walk(n, seed=n) for n in (20, 50, 35, 70, 44)]
    expected = pipeline.predict(context, 8, num_samples=8, samples_per_batch=8, seed=5, batch_size=2)
    real = pipeline.forecaster.forecast
    sizes = []

    def tight(inputs, *args, **kwargs):
        sizes.append(inputs.series.shape[0])
        if inputs.series.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(inputs, *args, **kwargs)

    monkeypatch.setattr(pipeline.forecaster, "forecast", tight)
    with pytest.warns(RuntimeWarning, match="batch_size=2"):
        got = pipeline.predict(context, 8, num_samples=8, samples_per_batch=8, seed=5, batch_size=5)
    assert sizes[:2] == [5, 2]  # 5 -> 2 series per batch (halved once), never fewer samples
    meta = pipeline.last_run_metadata
    assert (meta["batch_size"], meta["num_batches"], meta["num_samples_used"]) == (2, 3, 8)
    assert meta["oom_retries"] == 1
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.samples, b.samples)


def test_progress_bar_over_batches_of_series(pipeline, capsys):
    context = [walk(n, seed=n) for n in (20, 50, 35)]
    pipeline.predict(context, 8, num_samples=4, samples_per_batch=4, batch_size=1, show_progress=True)
    err = capsys.readouterr().err
    assert "toto predict" in err and "/3 " in err  # a bar over the 3 batches
    pipeline.predict(context, 8, num_samples=4, samples_per_batch=4, batch_size=1, show_progress=False)
    pipeline.predict(context, 8, num_samples=4, samples_per_batch=4, batch_size=1)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_progress_bar_without_tqdm_names_the_extra(pipeline, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    with pytest.raises(ImportError, match=r"toto-compiled\[progress\]"):
        pipeline.predict(walk(30), 8, num_samples=4, batch_size=1, show_progress=True)
    pipeline.predict([walk(30), walk(40)], 8, num_samples=4, batch_size=1)  # automatic: quietly off
