"""Toto 2.0 behind ``TotoPipeline``: the family read from ``config.json``, quantile forecasts
with Toto 1.0's interface, the sampling options refused, and bad input named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from checkpoints import TINY_TOTO2_CONFIG, write_random_toto2

from toto import TotoPipeline
from toto.config import ConfigError
from toto.checkpoints.reading import CheckpointError, resolve_checkpoint
from toto.families import Toto2Family
from toto.families.toto2 import fill_forward
from toto.inference.toto2_forecaster import DEFAULT_DECODE_BLOCK_SIZE, Toto2Forecaster
from toto.pipeline.forecasts import QuantileForecast
from toto.toto2.config import QUANTILE_LEVELS
from toto.toto2.loading import load_toto2

PATCH = TINY_TOTO2_CONFIG["patch_size"]


@pytest.fixture(scope="module")
def toto2_checkpoint(tmp_path_factory):
    return write_random_toto2(tmp_path_factory.mktemp("toto2"), TINY_TOTO2_CONFIG, seed=4)


@pytest.fixture(scope="module")
def pipeline(toto2_checkpoint):
    return TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")


def walk(*shape: int, seed: int = 0) -> torch.Tensor:
    return 10 + torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).cumsum(-1)


def test_the_family_is_read_from_config_json(pipeline):
    assert isinstance(pipeline.family, Toto2Family)
    assert pipeline.family.output == "quantiles" and pipeline.family.quantile_levels == QUANTILE_LEVELS
    assert pipeline.family.decode_block_size == DEFAULT_DECODE_BLOCK_SIZE == 768  # upstream's quick start


def test_predict_returns_quantile_forecasts_with_toto1s_interface(pipeline):
    context = [walk(100), walk(37, seed=1)]  # ragged: padded as missing
    forecasts = pipeline.predict(context, 20)
    assert len(forecasts) == 2 and all(isinstance(f, QuantileForecast) for f in forecasts)
    first = forecasts[0]
    assert first.samples is None
    assert first.quantiles.shape == (1, 1, 20, 9)
    np.testing.assert_array_equal(first.mean, first.quantiles[..., 4])  # the median: the point forecast
    np.testing.assert_array_equal(first.quantile(0.3), first.quantiles[..., 2])  # a knot: the model's own value
    halfway = (first.quantiles[..., 0] + first.quantiles[..., 1]) / 2
    np.testing.assert_allclose(first.quantile(0.15), halfway, rtol=1e-6)
    np.testing.assert_array_equal(first.quantile(0.01), first.quantiles[..., 0])  # held beyond the knots
    assert first.quantile([0.1, 0.5]).shape == (2, 1, 1, 20)
    assert first.numpy().shape == (9, 20)
    assert np.all(np.diff(first.quantiles, axis=-1) >= 0)
    # Each series as it would be alone: the padding is missing, not data.
    alone = pipeline.predict([walk(37, seed=1)], 20)[0]
    np.testing.assert_allclose(forecasts[1].quantiles, alone.quantiles, rtol=1e-5, atol=1e-5)


def test_predict_quantiles_returns_knots_and_interpolates_between(pipeline):
    context = torch.stack([walk(64), walk(64, seed=2)])
    knots, median = pipeline.predict_quantiles(context, 10, quantile_levels=list(QUANTILE_LEVELS))
    assert knots.shape == (2, 10, 9) and median.shape == (2, 10)
    forecasts = pipeline.predict(context, 10)
    np.testing.assert_array_equal(knots.numpy(), np.concatenate([f.quantiles[:, 0] for f in forecasts]))
    np.testing.assert_array_equal(median.numpy(), knots[..., 4].numpy())
    between, _ = pipeline.predict_quantiles(context, 10, quantile_levels=[0.25, 0.95])
    np.testing.assert_allclose(between[..., 0].numpy(), ((knots[..., 1] + knots[..., 2]) / 2).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(between[..., 1].numpy(), knots[..., 8].numpy())


@pytest.mark.parametrize(
    "option", [{"num_samples": 100}, {"samples_per_batch": 8}, {"seed": 1}, {"sample_keys": [1]}],
    ids=lambda o: next(iter(o)),
)
def test_sampling_options_are_errors_for_a_quantile_model(pipeline, option):
    with pytest.raises(ValueError, match=f"{next(iter(option))}: Toto 2.0 forecasts quantiles"):
        pipeline.predict(walk(64), 8, **option)


def test_the_pipeline_gives_the_forecasters_numbers(pipeline, toto2_checkpoint):
    """predict = fill missing values forward, then the forecaster at the default block size."""
    values = walk(2, 1, 90)
    values[0, 0, 40:47] = float("nan")
    forecasts = pipeline.predict(values, 50)
    observed = ~values.isnan()
    expected = Toto2Forecaster(load_toto2(resolve_checkpoint(toto2_checkpoint))).forecast(
        fill_forward(torch.nan_to_num(values), observed), observed, 50, DEFAULT_DECODE_BLOCK_SIZE
    )
    np.testing.assert_allclose(np.concatenate([f.quantiles for f in forecasts]), expected.permute(1, 2, 3, 0).numpy(),
                               rtol=1e-6, atol=1e-6)  # fmt: skip


def test_fill_forward_carries_the_last_observed_value():
    values = torch.tensor([[[0.0, 2.0, 0.0, 0.0, 5.0, 0.0]]])
    observed = torch.tensor([[[False, True, False, False, True, False]]])
    assert fill_forward(values, observed).tolist() == [[[0.0, 2.0, 2.0, 2.0, 5.0, 5.0]]]


def test_bad_input_names_the_argument(pipeline):
    forecaster = pipeline.family.forecaster
    context, observed = walk(1, 1, 64), torch.ones(1, 1, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match="decode_block_size"):
        forecaster.forecast(context, observed, 8, decode_block_size=PATCH + 1)
    with pytest.raises(ValueError, match="prediction_length"):
        forecaster.forecast(context, observed, 0)
    with pytest.raises(ValueError, match="prediction_length"):
        pipeline.predict(walk(64), 0)
    with pytest.raises(ValueError, match="context"):
        pipeline.predict(walk(PATCH - 1), 8)
    with pytest.raises(ValueError, match="quantile_levels"):
        pipeline.predict_quantiles(walk(64), 8, quantile_levels=[0.5, 1.5])
    with pytest.raises(ValueError, match="q must lie in|quantile levels"):
        pipeline.predict(walk(64), 8)[0].quantile(-0.1)


def test_an_unknown_flag_is_named_and_nothing_loads(tmp_path, toto2_checkpoint):
    config = json.loads((toto2_checkpoint / "config.json").read_text())
    for key, value, message in [
        ("use_swa", True, "unsupported Toto 2.0 key.*use_swa"),
        ("pre_norm", False, "pre_norm"),
        ("dropout_p", 0.1, "dropout_p"),
        ("num_heads", 3, "num_heads"),
        ("use_xpos", "yes", "use_xpos"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        (tmp_path / "model.safetensors").write_bytes((toto2_checkpoint / "model.safetensors").read_bytes())
        with pytest.raises(ConfigError, match=message):
            TotoPipeline.from_pretrained(str(tmp_path), device_map="cpu")
    broken = {k: v for k, v in config.items() if k != "residual_attn_ratio"}
    (tmp_path / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match=r"config.json.*residual_attn_ratio"):
        TotoPipeline.from_pretrained(str(tmp_path), device_map="cpu")


def test_weights_that_do_not_fit_are_named(tmp_path, toto2_checkpoint):
    from safetensors.torch import load_file, save_file

    state = load_file(str(toto2_checkpoint / "model.safetensors"))
    state.pop("transformer.layers.0.attn.in_proj.bias")
    (tmp_path / "config.json").write_text((toto2_checkpoint / "config.json").read_text())
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="transformer.layers.0.attn.in_proj.bias"):
        TotoPipeline.from_pretrained(str(tmp_path), device_map="cpu")


def test_save_pretrained_round_trip_is_exact(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "copy")
    copy = TotoPipeline.from_pretrained(str(tmp_path / "copy"), device_map="cpu")
    context = walk(2, 1, 80)
    np.testing.assert_array_equal(
        np.concatenate([f.quantiles for f in copy.predict(context, 30)]),
        np.concatenate([f.quantiles for f in pipeline.predict(context, 30)]),
    )


def test_data_frames_and_backtests_run_on_toto2(pipeline):
    pd = pytest.importorskip("pandas")
    from toto.evaluation import backtest

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "item_id": ["a"] * 120 + ["b"] * 90,
        "timestamp": [*pd.date_range("2024-01-01", periods=120, freq="h"),
                      *pd.date_range("2024-01-02", periods=90, freq="h")],
        "target": np.concatenate([10 + np.sin(np.arange(120) / 4), 5 + rng.normal(size=90).cumsum()]),
    })  # fmt: skip
    out = pipeline.predict_df(frame, prediction_length=5, quantile_levels=(0.1, 0.25, 0.5, 0.9))
    assert len(out) == 10 and list(out.columns[-4:]) == ["0.1", "0.25", "0.5", "0.9"]
    knots = pipeline.predict(torch.tensor(frame.target[:120].to_numpy(), dtype=torch.float32), 5)[0].quantiles[0, 0]
    first = out[out.item_id == "a"]
    np.testing.assert_allclose(first["0.1"], knots[:, 0], rtol=1e-5)
    np.testing.assert_allclose(first["0.25"], (knots[:, 1] + knots[:, 2]) / 2, rtol=1e-5)
    np.testing.assert_allclose(first["predictions"], knots[:, 4], rtol=1e-5)
    np.testing.assert_allclose(first["mean"], knots[:, 4], rtol=1e-5)  # a quantile model's mean: its median
    result = backtest(pipeline, frame, prediction_length=5, windows=2)
    assert np.isfinite(result.summary.loc["MASE", "toto"]) and np.isfinite(result.summary.loc["WQL", "toto"])
    with pytest.raises(ValueError, match="seed: Toto 2.0 forecasts quantiles"):
        pipeline.predict_df(frame, prediction_length=5, seed=0)


def test_sharded_checkpoints_load_as_huggingface_hub_writes_them(toto2_checkpoint, tmp_path):
    """The largest sizes may ship as shards plus model.safetensors.index.json (huggingface_hub's
    save_torch_state_dict, which upstream's save_pretrained uses): the same model loads."""
    from huggingface_hub import save_torch_state_dict
    from safetensors.torch import load_file

    state = load_file(str(toto2_checkpoint / "model.safetensors"))
    save_torch_state_dict(state, tmp_path, max_shard_size=20_000)
    (tmp_path / "config.json").write_text((toto2_checkpoint / "config.json").read_text())
    assert not (tmp_path / "model.safetensors").exists() and len(list(tmp_path.glob("model-*.safetensors"))) > 1
    sharded = TotoPipeline.from_pretrained(str(tmp_path), device_map="cpu")
    whole = TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")
    np.testing.assert_array_equal(sharded.predict(walk(64), 8)[0].quantiles, whole.predict(walk(64), 8)[0].quantiles)
    next(tmp_path.glob("model-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"model-\d{5}-of-\d{5}\.safetensors: cannot read"):
        TotoPipeline.from_pretrained(str(tmp_path), device_map="cpu")


def test_a_toto2_forecast_plots(pipeline, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("matplotlib")
    from toto.frames.plot import plot_forecast

    history = pd.DataFrame({"item_id": "a", "timestamp": pd.date_range("2024-01-01", periods=80, freq="h"),
                            "target": 10 + np.sin(np.arange(80) / 3)})  # fmt: skip
    forecast = pipeline.predict_df(history, prediction_length=6)
    figure = plot_forecast(history, forecast, path=tmp_path / "toto2.png")
    (axes,) = figure.axes
    median = [line for line in axes.get_lines() if line.get_label() == "median"][0]
    np.testing.assert_allclose(median.get_ydata(), forecast["predictions"])  # the model's own median knot
    assert (tmp_path / "toto2.png").stat().st_size > 0


def test_the_block_size_is_a_pipeline_setting(toto2_checkpoint, tiny_checkpoint):
    """One block (None) or blocks of one patch (upstream's decode_block_size), checked when set."""
    pipeline = TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")
    context, observed = walk(1, 1, 64), torch.ones(1, 1, 64, dtype=torch.bool)
    forecaster = pipeline.family.forecaster
    for size in (None, PATCH):
        pipeline.decode_block_size = size
        expected = forecaster.forecast(fill_forward(context, observed), observed, 40, size).permute(1, 2, 3, 0)
        np.testing.assert_array_equal(pipeline.predict(context, 40)[0].quantiles, expected.numpy())
    with pytest.raises(ValueError, match="decode_block_size .* must be a multiple of the patch size"):
        pipeline.decode_block_size = PATCH + 1
    assert pipeline.decode_block_size == PATCH  # unchanged by the refused value
    with pytest.raises(AttributeError, match="decode_block_size: Toto 1.0 decodes one patch at a time"):
        TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu").decode_block_size = 64


def test_non_finite_values_are_missing_for_the_forecaster(pipeline):
    forecaster = pipeline.family.forecaster
    values = walk(1, 1, 64)
    gappy = values.clone()
    gappy[..., 10:14] = float("nan")
    gappy[..., 20] = float("inf")
    observed = torch.ones_like(values, dtype=torch.bool)
    marked = observed.clone()
    marked[..., 10:14] = marked[..., 20] = False
    expected = forecaster.forecast(torch.where(marked, values, 0.0), marked, 8)
    torch.testing.assert_close(forecaster.forecast(gappy, observed, 8), expected, rtol=0, atol=0)
