"""Fine-tuning Toto 2.0 (which upstream cannot yet): the pinball loss over its knots, held-out
loss dropping on seasonal data, an exact save_pretrained round trip, a clean compiled step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import TINY_TOTO2_CONFIG, write_random_toto2

from toto import TotoPipeline
from toto.compile.diagnostics import snapshot
from toto.training import FitOptions, fit_backbone
from toto.training.quantile_loss import QuantileWindowLoss, pinball
from toto.training.windows import last_windows, make_windows, training_series


PATCH = TINY_TOTO2_CONFIG["patch_size"]


@pytest.fixture(scope="module")
def toto2_checkpoint(tmp_path_factory):
    return write_random_toto2(tmp_path_factory.mktemp("toto2"), TINY_TOTO2_CONFIG, seed=6)


def seasonal(length: int, phase: float, rng: np.random.Generator, period: int = 24) -> np.ndarray:
    return 10 + 3 * np.sin(2 * np.pi * np.arange(length) / period + phase) + rng.normal(0, 0.3, length)


@pytest.fixture(scope="module")
def learning_data():
    rng = np.random.default_rng(1)
    return [seasonal(600, p, rng) for p in rng.uniform(0, 6, 8)], [seasonal(600, p, rng) for p in rng.uniform(0, 6, 8)]


def test_pinball_is_the_quantile_loss():
    levels = torch.tensor([0.1, 0.5, 0.9])
    quantiles = torch.tensor([[0.0], [1.0], [2.0]])
    # y = 1.5: above the 0.1 and 0.5 knots (tau * error), below the 0.9 knot ((1 - tau) * -error).
    expected = (0.1 * 1.5 + 0.5 * 0.5 + 0.1 * 0.5) / 3
    torch.testing.assert_close(pinball(quantiles, torch.tensor([1.5]), levels), torch.tensor([expected]))


def test_the_loss_scores_the_next_patch_on_the_decoding_scale(toto2_checkpoint):
    """Each patch's quantiles against the next patch, asinh((x - loc) / scale) with the loc and scale of
    the patch that forecasts it: computed here from the model's own outputs, step by step."""
    pipeline = TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")
    model, patch = pipeline.model, TINY_TOTO2_CONFIG["patch_size"]
    raw = torch.from_numpy(np.stack([seasonal(5 * patch, 0.5, np.random.default_rng(2))])[:, None]).float()
    windows = make_windows(raw, patch, 0)
    total, count = QuantileWindowLoss(model)(*windows)
    with torch.no_grad():
        quantiles, loc, scale = model(raw[..., :-patch], windows.observed[..., :-patch])
    losses = []
    for index in range(4):
        following = raw[0, 0, (index + 1) * patch : (index + 2) * patch]
        target = torch.asinh((following - loc[0, 0, index]) / scale[0, 0, index])
        knots = quantiles[:, 0, 0, index, :patch]
        levels = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])[:, None]
        losses.append(torch.maximum(levels * (target - knots), (levels - 1) * (target - knots)).mean(0))
    assert count == 4 * patch
    torch.testing.assert_close(total, torch.cat(losses).sum(), rtol=1e-5, atol=1e-5)


def test_fit_lowers_the_held_out_loss_and_saves_exactly(toto2_checkpoint, learning_data, tmp_path, record):
    pd = pytest.importorskip("pandas")
    from toto.evaluation import backtest

    train, validation = learning_data
    pipeline = TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")
    # u-muP's unit-scaled weights take a larger learning rate than Toto 1.0's.
    tuned = pipeline.fit(train, prediction_length=32, context_length=128, num_steps=80, batch_size=16,
                         learning_rate=1e-2, compile=False, show_progress=False)  # fmt: skip
    windows = last_windows(training_series(validation), context_length=128, patch_size=PATCH, prediction_length=32)
    before, after = (held_out_pinball(p.model, windows) for p in (pipeline, tuned))
    stamps = pd.date_range("2024-01-01", periods=len(validation[0]), freq="h")
    frame = pd.concat([pd.DataFrame({"item_id": f"s{i}", "timestamp": stamps, "target": s})
                       for i, s in enumerate(validation)])  # fmt: skip
    mase = [backtest(p, frame, prediction_length=32, windows=2, seasonality=24).summary.loc["MASE", "toto"]
            for p in (pipeline, tuned)]  # fmt: skip
    record("Toto 2.0 fine-tuning: held-out pinball before", before)
    record("Toto 2.0 fine-tuning: held-out pinball after", after)
    record("Toto 2.0 fine-tuning: backtest MASE before", mase[0])
    record("Toto 2.0 fine-tuning: backtest MASE after", mase[1])
    assert after < 0.5 * before
    assert mase[1] < mase[0]
    assert tuned.family.name == "Toto 2.0" and tuned.model is not pipeline.model
    tuned.save_pretrained(tmp_path / "tuned")
    again = TotoPipeline.from_pretrained(str(tmp_path / "tuned"), device_map="cpu")
    context = torch.from_numpy(np.stack(validation[:2])[:, -200:]).float()
    np.testing.assert_array_equal(
        np.concatenate([f.quantiles for f in again.predict(context, 24)]),
        np.concatenate([f.quantiles for f in tuned.predict(context, 24)]),
    )


def held_out_pinball(model, windows) -> float:
    with torch.no_grad():
        total, count = QuantileWindowLoss(model)(*windows)
    return (total / count).item()


def test_compiled_step_has_no_graph_breaks_or_recompiles(toto2_checkpoint, learning_data, health_backend):
    train, validation = learning_data
    torch._dynamo.reset()
    pipeline = TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")
    options = FitOptions(prediction_length=32, context_length=64, num_steps=6, batch_size=8, validate_every=3,
                         compile=True, show_progress=False)  # fmt: skip
    before = snapshot()
    history = fit_backbone(pipeline.model, train, options, validation, quantile_model=True)
    stats = snapshot() - before
    assert history.steps == 6 and len(history.validation_loss) == 2
    assert stats.as_dict() == {"graph_breaks": 0, "graphs": 2, "recompiles": 0, "cudagraph_skips": 0}


def test_options_toto2_cannot_train_are_errors(toto2_checkpoint, learning_data):
    train, _ = learning_data
    pipeline = TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")
    with pytest.raises(ValueError, match="dropout: Toto 2.0 has no dropout"):
        pipeline.fit(train, prediction_length=32, context_length=64, num_steps=1, dropout=0.1, show_progress=False)
