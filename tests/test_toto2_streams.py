"""Live streams of Toto 2.0: forecasts equal a fresh call on the whole context (our forecaster,
itself within 2e-7 of the oracle), across appends, missing values, blocks and restarts."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from checkpoints import TINY_TOTO2_CONFIG, write_random_toto2
from compile_backends import HEALTH
from test_parity import rel

from toto.inference.quantile_scores import quantile_step_predictions
from toto.inference.stream import StreamError
from toto.pipeline import TotoPipeline


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_toto2(tmp_path_factory.mktemp("toto2"), TINY_TOTO2_CONFIG, seed=3)


@pytest.fixture(scope="module")
def pipeline(checkpoint):
    return TotoPipeline.from_pretrained(str(checkpoint), device_map="cpu", torch_compile=False)


def seasonal(variates: int, length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return (5 + np.sin(t / 4 + np.arange(variates)[:, None]) + rng.normal(0, 0.2, (variates, length))).astype(np.float32)


def fresh(pipeline, context: np.ndarray, horizon: int) -> torch.Tensor:
    """The family's forecast of the whole context, ``[batch, variate, horizon, knot]``."""
    series = torch.from_numpy(context)
    return pipeline.family.forecast(torch.nan_to_num(series), ~torch.isnan(series), horizon, num_samples=9,
                                    samples_per_batch=9)  # fmt: skip


APPENDS = {"patches": [16, 32, 16], "partial": [5, 11, 23, 9], "missing at the end": [16, 16, 16]}


@pytest.mark.parametrize("block", [768, 16], ids=["one block", "blocks of one patch"])
@pytest.mark.parametrize("appends", APPENDS)
def test_forecasts_equal_a_fresh_call_on_the_whole_context(checkpoint, appends, block, record):
    pipeline = TotoPipeline.from_pretrained(str(checkpoint), device_map="cpu", torch_compile=False)
    pipeline.decode_block_size = block
    patch = pipeline.family.patch_size
    full = seasonal(2, 16 * patch, seed=1)[None]
    full[0, 1, 6 * patch + 3] = np.nan
    if appends == "missing at the end":  # the last patch is read as observed, then no longer
        full[0, 0, 7 * patch - 4 : 7 * patch] = np.nan
    start = 5 * patch + 2 if appends == "partial" else 5 * patch
    stream = pipeline.stream(full[..., :start])
    horizon, end, worst = 3 * patch + 4, start, 0.0
    worst = rel(stream.forecast(horizon).quantiles, fresh(pipeline, full[..., :start], horizon))
    for steps in APPENDS[appends]:
        stream.append(full[0, :, end : end + steps])
        end += steps
        worst = max(worst, rel(stream.forecast(horizon).quantiles, fresh(pipeline, full[..., :end], horizon)))
    assert record("toto2 stream vs fresh", worst) <= 1e-5
    if appends != "partial":
        assert stream.reencodes == 1


def test_state_round_trip_scores_and_rollback(pipeline, checkpoint, monkeypatch):
    patch = pipeline.family.patch_size
    full = seasonal(1, 12 * patch, seed=2)[0]
    full[8 * patch + 5] += 30.0
    stream = pipeline.stream(full[: 6 * patch])
    scores = stream.append(full[6 * patch : 9 * patch], score=True)
    # The new steps' knots are the teacher-forced ones of the same steps.
    values = torch.from_numpy(full[: 9 * patch])[None, None]
    expected = quantile_step_predictions(pipeline.family.model, values, torch.ones_like(values, dtype=torch.bool))
    np.testing.assert_allclose(scores.tail_probability[0, 0].numpy(),
                               expected.tail_probability()[0, 0, 6 * patch :].numpy(), rtol=1e-4, atol=1e-6)  # fmt: skip
    assert scores.anomaly(1e-6)[0, 0, 2 * patch + 5] and torch.isnan(scores.nll).all()
    (held,) = pipeline.detect_anomalies(stream)  # the approximate scores of the window it holds
    np.testing.assert_array_equal(held.tail_probability, pipeline.detect_anomalies(full[: 9 * patch])[0].tail_probability)

    buffer = io.BytesIO()
    torch.save(stream.state_dict(), buffer)
    restarted = TotoPipeline.from_pretrained(str(checkpoint), device_map="cpu", torch_compile=False)
    resumed = restarted.stream_from_state(torch.load(io.BytesIO(buffer.getvalue())))
    for s in (stream, resumed):
        s.append(full[9 * patch : 10 * patch])
    assert torch.equal(stream.forecast(2 * patch).quantiles, resumed.forecast(2 * patch).quantiles)

    before = stream.forecast(patch).quantiles
    engine, calls = stream._engine, []
    encode = engine._encode_slots

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return encode(*args)

    monkeypatch.setattr(engine, "_encode_slots", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        stream.append(full[10 * patch : 12 * patch])
    monkeypatch.undo()
    assert torch.equal(stream.forecast(patch).quantiles, before)
    stream.append(full[10 * patch : 12 * patch])
    assert rel(stream.forecast(patch).quantiles, fresh(pipeline, full[None, None, : 12 * patch], patch)) <= 1e-5
    with pytest.raises(ValueError, match="num_samples, seed: Toto 2.0 forecasts quantiles"):
        stream.forecast(patch, num_samples=4)
    with pytest.raises(ValueError, match="beyond this stream's max_horizon 1024"):
        stream.forecast(8000)  # a horizon past the room max_horizon made, with this context
    with pytest.raises(StreamError, match=r"expected \[batch=1, variate=1, steps\]"):
        stream.append(np.ones((2, 3)))


def test_toto2_streams_compile_and_stay_compiled(checkpoint):
    from toto.compile.health import steady_state

    pipeline = TotoPipeline.from_pretrained(str(checkpoint), device_map="cpu", torch_compile=True,
                                            compile_backend=HEALTH)  # fmt: skip
    patch = pipeline.family.patch_size
    full = seasonal(2, 40 * patch, seed=4)[None]
    stream = pipeline.stream(full[..., : 10 * patch])
    position = [10 * patch]

    def append_and_forecast():
        stream.append(full[0, :, position[0] : position[0] + patch])
        position[0] += patch
        return stream.forecast(2 * patch)

    health = steady_state([append_and_forecast], rounds=3)
    assert health.warm.graphs >= 2 and not health.problems()  # the step's encode and the forecast's block
    assert stream._engine._encode_slots.active and pipeline.family.forecaster.compiled
    assert rel(stream.forecast(patch).quantiles, fresh(pipeline, full[..., : position[0]], patch)) <= 1e-5
