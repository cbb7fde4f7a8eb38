"""The model-family seam: the family comes from config.json, and the pipeline, data frames and
backtests run on any ModelFamily; plus the pipeline defaults a new user hit."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from toto import TotoPipeline
from toto.compile.policy import CompileOptions, CompileSettings
from toto.config import PUBLISHED_CONFIG, ConfigError
from toto.families import ModelFamily, Toto1Family, family_of, load_family
from toto.pipeline import pipeline as pipeline_module


class LastValue(ModelFamily):
    """A family that is not Toto: every sample path repeats the last observed value plus unit noise."""

    name = "last value"
    output = "samples"

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    @classmethod
    def accepts(cls, config):
        return config.get("family") == "last-value"

    @classmethod
    def from_files(cls, files, *, device, dtype, compile):
        return cls()

    patch_size = 4  # type: ignore[assignment]
    max_context = 64  # type: ignore[assignment]
    device = torch.device("cpu")  # type: ignore[assignment]
    dtype = torch.float32  # type: ignore[assignment]
    compile_settings = CompileSettings()  # type: ignore[assignment]
    compiled = False  # type: ignore[assignment]
    compile_error = None  # type: ignore[assignment]

    def forecast(self, series, observed, prediction_length, *, num_samples, samples_per_batch, future=None,
                 sample_keys=None, progress=None):  # fmt: skip
        self.calls.append(tuple(series.shape))
        last = torch.stack([s[o][-1] for s, o in zip(series.flatten(0, 1), observed.flatten(0, 1))])
        last = last.view(*series.shape[:2], 1, 1)
        return last + torch.randn(*series.shape[:2], prediction_length, num_samples)

    def compile_bucket(self, context_length, prediction_length):
        return 0

    def clear_buffers(self):
        pass

    def unload(self):
        pass

    def save_pretrained(self, directory):
        raise NotImplementedError


def test_the_family_is_read_from_config_json(tiny_checkpoint):
    assert family_of(PUBLISHED_CONFIG, "config.json") is Toto1Family
    family = load_family(tiny_checkpoint, device=torch.device("cpu"))
    assert isinstance(family, Toto1Family) and family.patch_size == json.loads((tiny_checkpoint / "config.json").read_text())["patch_size"]
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu")
    assert isinstance(pipeline.family, Toto1Family) and pipeline.model is pipeline.family.model


def test_an_unknown_config_names_the_file_and_its_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg\.json: not a config of a known model family \(Toto 1\.0, Toto 2\.0\); its keys: \['d_model', 'x'\]"):
        family_of({"d_model": 256, "x": 1}, "cfg.json")
    with pytest.raises(ConfigError, match="cfg.json: expected a JSON object, found list"):
        family_of([1, 2], "cfg.json")
    (tmp_path / "config.json").write_text('{"d_model": 256}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'config.json'}: not a config of a known model family"):
        TotoPipeline.from_pretrained(str(tmp_path), device_map="cpu")


def test_pipeline_frames_and_backtests_run_on_any_family():
    pd = pytest.importorskip("pandas")
    from toto.evaluation import backtest

    family = LastValue()
    pipeline = TotoPipeline(family)
    forecasts = pipeline.predict([torch.arange(10.0), torch.full((6,), 5.0)], 3, num_samples=400, seed=0)
    assert [f.samples.shape for f in forecasts] == [(1, 1, 3, 400)] * 2
    np.testing.assert_allclose([f.mean.mean() for f in forecasts], [9.0, 5.0], atol=0.2)
    assert pipeline.last_run_metadata["device"] == "cpu" and pipeline.compiled is False

    frame = pd.DataFrame({"item_id": ["a"] * 30, "timestamp": pd.date_range("2024-01-01", periods=30, freq="D"),
                          "target": np.arange(30.0)})  # fmt: skip
    out = pipeline.predict_df(frame, prediction_length=2, num_samples=200, seed=0)
    assert list(out.timestamp.astype(str)) == ["2024-01-31", "2024-02-01"]
    np.testing.assert_allclose(out["mean"], 29.0, atol=0.3)
    result = backtest(pipeline, frame, prediction_length=2, windows=2, num_samples=64, seed=0)
    assert result.metrics.shape[0] == 2 and np.isfinite(result.summary.loc["MAE", "toto"])


def test_a_family_keeps_its_own_compile_settings():
    with pytest.raises(TypeError, match="holds its compile settings"):
        TotoPipeline(LastValue(), torch_compile=True)
    with pytest.raises(NotImplementedError, match="fine-tuning is not available for last value models"):
        TotoPipeline(LastValue()).fit([np.arange(64.0)], prediction_length=4, context_length=8, num_steps=1)


def test_compile_options_are_checked_once_and_resolve_per_device():
    with pytest.raises(ValueError, match="compile_mode: unknown mode 'fast'"):
        CompileOptions(compile_mode="fast")
    options = CompileOptions(torch_compile=True)
    assert options.resolve("cpu").mode == "default" and options.resolve("cuda").mode == "reduce-overhead"
    assert options.resolve("cuda").compile_prefill and not options.resolve("cpu").compile_prefill
    assert set(options.keywords()) == {"torch_compile", "compile_mode", "compile_backend", "compile_prefill",
                                       "compile_cache_dir"}  # fmt: skip


def test_the_device_defaults_to_cuda_when_present_else_the_cpu(tiny_checkpoint, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("INFO", logger="toto"):
        pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), torch_compile=True)
    assert pipeline.device == torch.device("cpu") and pipeline.compile_settings.enabled
    assert "device_map=None: loading onto cpu" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pipeline_module._device(None) == torch.device("cuda")


def test_predict_quantiles_draws_256_samples_unless_asked(tiny_checkpoint, monkeypatch):
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu")
    asked = []
    real = pipeline.predict
    monkeypatch.setattr(pipeline, "predict", lambda *a, **k: asked.append(a[2]) or real(*a, **k))
    quantiles, mean = pipeline.predict_quantiles(torch.randn(64), 8)
    assert asked == [256] and quantiles.shape == (1, 8, 9) and mean.shape == (1, 8)
    pipeline.predict_quantiles(torch.randn(64), 8, num_samples=32)
    assert asked == [256, 32]


def test_ignored_predict_options_warn_once(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(pipeline_module, "_warned_ignored", set())
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu")
    with pytest.warns(UserWarning, match="temperature ignored") as caught:
        pipeline.predict(torch.randn(64), 8, num_samples=2, temperature=0.5)
    assert caught[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.predict(torch.randn(64), 8, num_samples=2, temperature=0.7)
    with pytest.warns(UserWarning, match="top_k ignored"):
        pipeline.predict(torch.randn(64), 8, num_samples=2, temperature=0.7, top_k=5)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['beam'\]"):
        pipeline.predict(torch.randn(64), 8, beam=2)


def test_frame_and_backtest_options_name_the_bad_argument():
    from toto.evaluation.backtest import BacktestOptions
    from toto.frames.options import FrameOptions

    options = FrameOptions(prediction_length=4, target=["a", "b"], quantile_levels=[0.5])
    assert options.targets == ("a", "b") and options.samples_per_batch == 256 and options.quantile_levels == (0.5,)
    for bad, name in [({"prediction_length": 0}, "prediction_length"), ({"prediction_length": 1, "num_samples": 0},
                      "num_samples"), ({"prediction_length": 1, "quantile_levels": [1.5]}, "quantile_levels"),
                      ({"prediction_length": 1, "target": []}, "target")]:  # fmt: skip
        with pytest.raises(ValueError, match=name):
            FrameOptions(**bad)
    with pytest.raises(ValueError, match="windows"):
        BacktestOptions(windows=0)
    with pytest.raises(ValueError, match="interval"):
        BacktestOptions(interval=(0.2, 0.8)).interval_levels((0.1, 0.5, 0.9))
    assert BacktestOptions().stride_for(7) == 7 and BacktestOptions(stride=3).stride_for(7) == 3


def test_metadata_reports_the_sample_batch_the_family_ran():
    class Shrinking(LastValue):
        last_samples_per_batch = 3  # type: ignore[assignment]

    pipeline = TotoPipeline(Shrinking())
    pipeline.predict(torch.arange(8.0), 2, num_samples=16, samples_per_batch=8)
    assert pipeline.last_run_metadata["samples_per_batch_used"] == 3
    pipeline = TotoPipeline(LastValue())
    pipeline.predict(torch.arange(8.0), 2, num_samples=16, samples_per_batch=8)
    assert pipeline.last_run_metadata["samples_per_batch_used"] == 8


def test_a_damaged_toto_config_names_the_missing_key(tmp_path):
    config = {key: value for key, value in PUBLISHED_CONFIG.items() if key != "output_distribution_classes"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="output_distribution_classes"):
        TotoPipeline.from_pretrained(str(tmp_path), device_map="cpu")


def test_a_family_without_step_predictions_cannot_score():
    pipeline = TotoPipeline(LastValue())
    with pytest.raises(ValueError, match="gives no per-step predictions: it cannot score anomalies"):
        pipeline.detect_anomalies(np.arange(40.0))
