"""Live streams: forecasts equal a fresh call on the whole context, against our forecaster and the oracle."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from checkpoints import TINY_CONFIG, write_checkpoint
from compile_backends import HEALTH
from oracle import import_oracle
from test_parity import _masked, rel

from toto.data.util.dataset import fill_missing, masked_timeseries
from toto.inference.likelihood import step_predictions
from toto.inference.stream import StreamError
from toto.pipeline import TotoPipeline


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


def seasonal(length: int, seed: int = 0, variates: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return (10 + np.sin(t / 5 + np.arange(variates)[:, None]) + rng.normal(0, 0.3, (variates, length))).astype(np.float32)


def fresh_mean(pipeline, context: np.ndarray, horizon: int) -> torch.Tensor:
    """Our forecaster's mean path on the whole context, as ``predict`` runs it (leading padding hidden)."""
    series = torch.from_numpy(np.asarray(context, dtype=np.float32))
    inputs = masked_timeseries(series if series.ndim == 3 else series.reshape(1, 1, -1))
    return pipeline.family.forecaster.forecast(inputs, horizon, hide_leading_padding=True).mean


# Steps per append: whole patches, several at once, parts of patches (re-encoded at the next forecast).
APPENDS = {"patches": [16, 16, 32, 16], "partial": [5, 11, 16, 3, 29, 16], "mixed": [40, 7, 9, 16]}


@pytest.mark.parametrize("appends", APPENDS)
def test_forecasts_equal_a_fresh_call_on_the_whole_context(pipeline, appends, record):
    patch = pipeline.family.patch_size
    assert patch == 16
    full = seasonal(20 * patch, variates=2)[None]  # one series of two variates
    full[0, 0, 7 * patch + 2 : 7 * patch + 5] = np.nan  # missing values inside appended patches
    start = 5 * patch + 3
    stream = pipeline.stream(full[..., :start])
    worst, end = rel(stream.forecast(3 * patch).mean, fresh_mean(pipeline, full[..., :start], 3 * patch)), start
    for steps in APPENDS[appends]:
        stream.append(full[0, :, end : end + steps])
        end += steps
        horizon = 2 * patch + 5
        np.testing.assert_array_equal(stream.context.numpy(), full[..., :end])
        worst = max(worst, rel(stream.forecast(horizon).mean, fresh_mean(pipeline, full[..., :end], horizon)))
    assert record("stream mean vs fresh", worst) <= 1e-5
    if appends == "patches":  # whole patches: the window was encoded once, at the start
        assert stream.reencodes == 1


@torch.no_grad()
def test_stream_matches_the_oracle(tiny_checkpoint, record):
    """The mean path after cached steps, against upstream's forecaster on the whole context
    (the oracle gets our filled values and mask); the next patch's mixture against a
    teacher-forced pass over the context (the distribution's parameters, not only its mean)."""
    theirs = import_oracle("model.toto").Toto.load_from_checkpoint(str(tiny_checkpoint)).model.eval()
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)
    patch = pipeline.family.patch_size
    full = seasonal(12 * patch, seed=3, variates=3)
    full[1, 6 * patch + 4] = np.nan
    stream = pipeline.stream(full[None, :, : 4 * patch])
    for end in range(5 * patch, 12 * patch + 1, patch):
        stream.append(full[:, end - patch : end])
    assert stream.reencodes == 1
    horizon = 3 * patch + 2
    series, missing = fill_missing(torch.from_numpy(full)[None])
    ids = torch.zeros_like(series, dtype=torch.int)
    upstream = import_oracle("inference.forecaster")
    dataset = import_oracle("data.util.dataset")
    expected = upstream.TotoForecaster(theirs).forecast(_masked(series, ~missing, ids, dataset), horizon, use_kv_cache=True)
    assert record("stream mean vs oracle", rel(stream.forecast(horizon).mean, expected.mean)) <= 1e-5
    # The head: the mixture of the patch after the context, as a teacher-forced pass predicts it.
    grown = torch.cat((series, torch.zeros(1, 3, patch)), dim=-1)
    observed = torch.cat((~missing, torch.ones(1, 3, patch, dtype=torch.bool)), dim=-1)
    predicted = step_predictions(pipeline.family.model.model, grown, observed)
    head = stream._engine.buffers.context.head
    for name, ours_t, teacher in zip(("df", "loc", "scale", "logits"), head[:4],
                                     (predicted.mixture.df, predicted.mixture.loc, predicted.mixture.scale,
                                      predicted.mixture.logits)):  # fmt: skip
        assert record(f"stream head {name}", rel(ours_t, teacher[..., -patch:, :])) <= 1e-5, name


def test_a_ragged_batch_streams_as_each_series_alone(pipeline):
    patch = pipeline.family.patch_size
    a, b = seasonal(9 * patch, seed=1)[0], seasonal(6 * patch + 4, seed=2)[0]
    stream = pipeline.stream([a[: 7 * patch], b[: 4 * patch + 4]])
    stream.append(np.stack([a[7 * patch :], b[4 * patch + 4 :]])[:, None])
    together = stream.forecast(2 * patch).mean
    for row, series in enumerate((a, b)):
        assert rel(together[row], fresh_mean(pipeline, series, 2 * patch)[0]) <= 1e-5


def test_a_moving_clamp_re_encodes(pipeline):
    """Huge levels after a flat start: the early patches' scales sit at the global clamp's lower
    bound, which moves with every append; the stream notices and re-encodes, staying exact."""
    patch = pipeline.family.patch_size
    rng = np.random.default_rng(5)
    full = np.concatenate([np.full(3 * patch, 1e12), 1e12 + rng.normal(0, 1e11, 6 * patch)]).astype(np.float32)
    stream = pipeline.stream(full[: 5 * patch])
    for end in range(6 * patch, 9 * patch + 1, patch):
        stream.append(full[end - patch : end])
        assert rel(stream.forecast(patch).mean, fresh_mean(pipeline, full[:end], patch)) <= 1e-5
    assert stream.reencodes > 1


def test_past_max_context_the_window_is_cut_and_encoded_once(pipeline):
    patch = pipeline.family.patch_size
    full = seasonal(30 * patch, seed=6)[0]
    stream = pipeline.stream(full[: 6 * patch], max_context=8 * patch, keep=6 * patch)
    ends = []
    for end in range(7 * patch, 20 * patch + 1, patch):
        stream.append(full[end - patch : end])
        ends.append((end, stream.context.shape[-1], stream.reencodes))
        assert stream.context.shape[-1] <= 8 * patch
        window = stream.context.numpy()[0, 0]
        np.testing.assert_array_equal(window, full[end - window.size : end])
        assert rel(stream.forecast(patch).mean, fresh_mean(pipeline, window, patch)) <= 1e-5
    # Cut to 6 patches when the 9th arrives, then cached steps until 8 again: every 3 patches.
    assert [r for _, _, r in ends] == [1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5][: len(ends)]


def test_state_round_trip_resumes_with_identical_forecasts(pipeline, tiny_checkpoint, tmp_path):
    patch = pipeline.family.patch_size
    full = seasonal(12 * patch, seed=7, variates=2)
    stream = pipeline.stream(full[None, :, : 5 * patch])
    stream.append(full[:, 5 * patch : 7 * patch + 3])
    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)
    restarted = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)
    resumed = restarted.stream_from_state(torch.load(io.BytesIO(buffer.getvalue())))
    for s in (stream, resumed):
        s.append(full[:, 7 * patch + 3 : 9 * patch])
    assert torch.equal(stream.forecast(2 * patch).mean, resumed.forecast(2 * patch).mean)
    a, b = stream.forecast(patch, num_samples=8, seed=3), resumed.forecast(patch, num_samples=8, seed=3)
    assert torch.equal(a.samples, b.samples)

    other = TotoPipeline.from_pretrained(str(write_checkpoint(tmp_path / "other", TINY_CONFIG, seed=9)),
                                         device_map="cpu", torch_compile=False)  # fmt: skip
    state = stream.state_dict()
    with pytest.raises(StreamError, match=r"stream state from model Toto.*:\w+; this pipeline's model is Toto.*:\w+"):
        other.stream_from_state(state)
    with pytest.raises(StreamError, match=r"toto-compiled 0\.0\.1; this is toto-compiled"):
        restarted.stream_from_state({**state, "version": "0.0.1"})


def test_bad_appends_leave_the_stream_unchanged(pipeline, monkeypatch):
    patch = pipeline.family.patch_size
    full = seasonal(10 * patch, seed=8, variates=2)
    stream = pipeline.stream(full[None, :, : 5 * patch])
    before = stream.forecast(patch).mean
    with pytest.raises(StreamError, match=r"expected \[batch=1, variate=2, steps\]"):
        stream.append(full[:1, 5 * patch : 6 * patch])
    bad = full[:, 5 * patch : 6 * patch].copy()
    bad[1, 3] = np.inf
    with pytest.raises(StreamError, match="±inf"):
        stream.append(bad)
    # A failure in the middle of a batched append (the second of three cached steps) is rolled back.
    step, calls = pipeline.family.forecaster._stream_step, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return step(*args)

    monkeypatch.setattr(pipeline.family.forecaster, "_stream_step", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        stream.append(full[:, 5 * patch : 8 * patch])
    monkeypatch.undo()
    assert stream.context.shape[-1] == 5 * patch and stream.pending == 0
    assert torch.equal(stream.forecast(patch).mean, before)
    stream.append(full[:, 5 * patch : 8 * patch])  # and it goes on as if nothing happened
    assert rel(stream.forecast(patch).mean, fresh_mean(pipeline, full[None, :, : 8 * patch], patch)) <= 1e-5
    stream.close()
    with pytest.raises(StreamError, match="closed"):
        stream.append(full[:, 8 * patch : 9 * patch])


def test_scores_of_appended_steps_use_the_forecast_made_before_they_arrived(pipeline):
    patch = pipeline.family.patch_size
    full = seasonal(10 * patch, seed=9)[0]
    full[7 * patch + 5] += 50.0
    stream = pipeline.stream(full[: 6 * patch])
    first = stream.append(full[6 * patch : 6 * patch + 4], score=True)
    rest = stream.append(full[6 * patch + 4 : 9 * patch], score=True)
    nll = torch.cat((first.nll, rest.nll), dim=-1)[0, 0]
    # The teacher-forced densities of the same steps (the same predictions, up to scale + eps).
    (density,) = pipeline.log_likelihood(full[: 9 * patch])
    np.testing.assert_allclose(nll.numpy(), -density[0, 6 * patch :], rtol=1e-4)
    flags = rest.anomaly(1e-4)[0, 0]
    assert flags[7 * patch + 5 - (6 * patch + 4)] and flags.sum() == 1


def test_detect_anomalies_of_a_stream_scores_the_window_it_holds(pipeline, tiny_checkpoint):
    patch = pipeline.family.patch_size
    full = seasonal(12 * patch, seed=11, variates=2)
    full[1, 9 * patch + 3] += 50.0
    end = 9 * patch + 7  # a partial patch pending
    stream = pipeline.stream(full[None, :, : 5 * patch])
    stream.append(full[:, 5 * patch : end])
    (scores,) = pipeline.detect_anomalies(stream)
    (direct,) = pipeline.detect_anomalies(full[None, :, :end])  # [batch, variate, time]
    assert scores.nll.shape == (2, end)
    np.testing.assert_array_equal(scores.nll, direct.nll)
    np.testing.assert_array_equal(scores.tail_probability, direct.tail_probability)
    assert scores.anomaly[1, 9 * patch + 3]
    np.testing.assert_array_equal(pipeline.log_likelihood(stream)[0], -direct.nll)
    other = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)
    with pytest.raises(StreamError, match="another pipeline"):
        other.detect_anomalies(stream)
    stream.close()
    with pytest.raises(StreamError, match="closed"):
        pipeline.log_likelihood(stream)


def test_streams_compile_and_stay_compiled(tiny_checkpoint):
    """Appends and forecasts of a warm stream: no graph breaks, no new graphs, no recompiles."""
    from toto.compile.health import steady_state

    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=True,
                                            compile_backend=HEALTH)  # fmt: skip
    patch = pipeline.family.patch_size
    full = seasonal(40 * patch, seed=10, variates=2)
    stream = pipeline.stream(full[None, :, : 10 * patch])
    position = [10 * patch]

    def append_and_forecast(steps: int, samples: int | None):
        def call():
            stream.append(full[:, position[0] : position[0] + steps])
            position[0] += steps
            return stream.forecast(2 * patch, num_samples=samples, samples_per_batch=4)
        return call

    health = steady_state([append_and_forecast(patch, None), append_and_forecast(2 * patch, 4)], rounds=2)
    assert health.warm.graphs >= 3 and not health.problems()  # append step, prefixed mean step, sample step
    forecaster = pipeline.family.forecaster
    assert forecaster._stream_step.active and forecaster._prefixed_mean_step.active and not forecaster.compile_error
    assert rel(stream.forecast(patch).mean, fresh_mean(pipeline, full[None, :, : position[0]], patch)) <= 1e-5


def test_more_streams_than_fit_are_refused_with_the_bytes(pipeline, monkeypatch):
    from toto.inference import stream as stream_module

    patch = pipeline.family.patch_size
    one = pipeline.stream(seasonal(4 * patch)[0])
    expected = stream_module.stream_bytes(one._engine, 1, 1, one.capacity)
    assert one.nbytes() == expected + one.context.numel() * 4  # its buffers, plus the window on the CPU
    monkeypatch.setattr(stream_module, "available_bytes", lambda device: 10 * expected)
    pipeline.stream(np.stack([seasonal(4 * patch)[0]] * 10))  # ten series fit
    with pytest.raises(StreamError, match=r"11 series x 1 variates .* needs [\d.]+ .iB on cpu, but only [\d.]+ .iB"):
        pipeline.stream(np.stack([seasonal(4 * patch)[0]] * 11))


def test_a_stream_runs_under_the_pipelines_autocast(tiny_checkpoint):
    """With ``amp_dtype``, a stream computes as the pipeline's predict does (bfloat16 autocast)."""
    amp = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False,
                                       amp_dtype=torch.bfloat16)  # fmt: skip
    patch = amp.family.patch_size
    full = seasonal(8 * patch, seed=11)[0]
    stream = amp.stream(full[: 6 * patch])
    stream.append(full[6 * patch :])
    with torch.autocast("cpu", torch.bfloat16):
        expected = fresh_mean(amp, full, patch)
    plain = fresh_mean(amp, full, patch)  # float32
    live = stream.forecast(patch).mean
    # Cached and whole-context arithmetic round differently in bfloat16; the stream is bfloat16's.
    assert rel(live, expected) <= 2e-3 and rel(live, plain) > 1e-5


def test_scores_across_a_re_anchor(pipeline):
    """An append that passes max_context cuts the window first, then scores the new steps
    against the cut window's prediction, as the teacher-forced pass on that window does."""
    patch = pipeline.family.patch_size
    full = seasonal(12 * patch, seed=12)[0]
    stream = pipeline.stream(full[: 8 * patch], max_context=8 * patch, keep=6 * patch)
    scores = stream.append(full[8 * patch : 9 * patch + 5], score=True)
    assert stream.reencodes == 2 and stream.context.shape[-1] == 6 * patch
    window = full[9 * patch + 5 - 6 * patch : 9 * patch + 5]  # the window the stream now holds
    # Cut to its last 6 patches less the 21 new steps (75 steps, left-padded by 5 to whole
    # patches); the first new patch is scored on that grid, as a pass over cut + patch scores it.
    (density,) = pipeline.log_likelihood(window[: 75 + patch])
    np.testing.assert_allclose(scores.nll[0, 0, :patch].numpy(), -density[0, -patch:], rtol=1e-4)
    assert scores.nll.shape == (1, 1, patch + 5) and torch.isfinite(scores.nll).all()
