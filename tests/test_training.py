"""Fine-tuning (``toto.training``, ``TotoPipeline.fit``): parity with upstream's Lightning module,
compile health, learning, saving, and the errors of bad input."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import TINY_CONFIG, write_checkpoint
from compile_backends import HEALTH
from oracle import import_oracle

from toto import Toto, TotoPipeline
from toto.compile.diagnostics import snapshot
from toto.training import (
    FitOptions,
    TrainingDiverged,
    TrainingStep,
    WindowLoss,
    WindowSampler,
    fit_backbone,
    last_windows,
    set_dropout,
    trainable_parameters,
    training_series,
)
from toto.training.step import EPS

PATCH = TINY_CONFIG["patch_size"]


def seasonal(length: int, phase: float, rng: np.random.Generator, period: int = 24) -> np.ndarray:
    t = np.arange(length)
    return 10 + 3 * np.sin(2 * np.pi * t / period + phase) + rng.normal(0, 0.3, length)


def with_gaps(values: torch.Tensor, every: int) -> torch.Tensor:
    values = values.clone()
    values[..., ::every] = math.nan
    return values


def sample_windows(series, batch: int, context: int = 4 * PATCH, num_exogenous: int = 0, seed: int = 0):
    sampler = WindowSampler(training_series(series, num_exogenous=num_exogenous), context_length=context,
                            patch_size=PATCH, num_exogenous=num_exogenous)  # fmt: skip
    return sampler.sample(batch, torch.Generator().manual_seed(seed))


def ours_and_upstream(checkpoint: Path, variate_labels: bool = False):
    """Our backbone and upstream's ``TotoForFinetuning`` on the same files, dropout off, in training mode."""
    upstream_toto = import_oracle("model.toto")
    lightning_module = import_oracle("model.lightning_module")
    ours = Toto.load_from_checkpoint(checkpoint).model
    theirs = upstream_toto.Toto.load_from_checkpoint(str(checkpoint)).model
    module = lightning_module.TotoForFinetuning(pretrained_backbone=theirs, val_prediction_len=2 * PATCH)
    if variate_labels:
        ours.enable_variate_labels()
        module.model.enable_variate_labels()
        with torch.no_grad():  # upstream draws its own random labels: give it ours
            module.model.target_variate_label.copy_(ours.target_variate_label)
            module.model.exogenous_variate_label.copy_(ours.exogenous_variate_label)
    set_dropout(ours, 0.0)
    set_dropout(module.model, 0.0)  # upstream's attention keeps a float ``dropout`` and nn.Dropout modules too
    return ours.train(), module.train()


def upstream_batch(windows, num_exogenous: int = 0, patch: int = PATCH):
    dataset = import_oracle("data.util.dataset")
    batch, variates, length = windows.series.shape
    return dataset.CausalMaskedTimeseries(
        series=windows.series,
        padding_mask=windows.observed,
        id_mask=torch.zeros(batch, variates, length, dtype=torch.long),
        timestamp_seconds=torch.arange(length).expand(batch, variates, length),
        time_interval_seconds=torch.ones(batch, variates, dtype=torch.long),
        input_slice=slice(0, length - patch),
        target_slice=slice(patch, length),
        num_exogenous_variables=num_exogenous,
    )


def upstream_loss(module, batch, is_train: bool = True) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a Trainer
        return module._train_or_val_step(batch, is_train=is_train)


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).detach().abs().max() / theirs.detach().abs().max().clamp_min(1e-30))


def assert_gradients_match(ours, theirs, record=None, tolerance: float = 1e-4) -> None:
    our_grads = {name: p.grad for name, p in ours.named_parameters() if p.grad is not None}
    their_grads = {name: p.grad for name, p in theirs.named_parameters() if p.grad is not None}
    assert our_grads.keys() == their_grads.keys()
    worst = max(relative_error(our_grads[name], their_grads[name]) for name in our_grads)
    if record is not None:
        record("fine-tuning gradient, max over parameters", worst)
    assert worst <= tolerance, worst


# --- parity with upstream ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", pytest.param("full", marks=pytest.mark.slow)])
def test_training_loss_and_gradients_equal_upstream(size, request, record):
    checkpoint = request.getfixturevalue(f"{size}_checkpoint")
    patch = Toto.load_from_checkpoint(checkpoint).config.patch_size if size == "full" else PATCH
    rng = np.random.default_rng(0)
    series = [torch.from_numpy(np.stack([seasonal(700, p, rng), seasonal(700, -p, rng) * 2])).float() for p in (0.3, 2.0)]
    series[1] = with_gaps(series[1], 7)  # missing values: masked from the scaler and the loss alike
    context = 2 * patch if size == "full" else 4 * patch
    sampler = WindowSampler(training_series(series), context_length=context, patch_size=patch)
    windows = sampler.sample(2 if size == "full" else 6, torch.Generator().manual_seed(3))
    ours, module = ours_and_upstream(checkpoint)

    total, count = WindowLoss(ours)(*windows)
    mean = total / (count + EPS)
    theirs = upstream_loss(module, upstream_batch(windows, patch=patch))
    record(f"fine-tuning loss ({size})", relative_error(mean, theirs))
    assert relative_error(mean, theirs) <= 1e-5
    mean.backward()
    theirs.backward()
    assert_gradients_match(ours, module.model, record)


def test_validation_loss_equals_upstream(tiny_checkpoint):
    """Upstream validates on the last ``val_prediction_len`` target steps; so do our validation windows."""
    rng = np.random.default_rng(1)
    series = [torch.from_numpy(seasonal(300 + 17 * i, i, rng)).float() for i in range(3)]
    windows = last_windows(training_series(series), context_length=4 * PATCH, patch_size=PATCH, prediction_length=2 * PATCH)
    ours, module = ours_and_upstream(tiny_checkpoint)
    with torch.no_grad():
        total, count = WindowLoss(ours.eval()).evaluate(*windows)
        theirs = upstream_loss(module.eval(), upstream_batch(windows), is_train=False)
    assert count == 3 * 2 * PATCH
    assert relative_error(total / (count + EPS), theirs) <= 1e-5


def test_exogenous_variates_are_left_out_of_the_loss(tiny_checkpoint):
    """With variate labels, ours equals upstream given upstream's own mask; our mask drops the exogenous
    variates, where upstream's ``mask[..., -n:] = False`` drops the last n time steps (documented)."""
    rng = np.random.default_rng(2)
    series = [torch.from_numpy(np.stack([seasonal(500, p, rng), seasonal(500, p + 1, rng)])).float() for p in (0, 1)]
    windows = sample_windows(series, 4, num_exogenous=1)
    assert windows.loss_mask[:, 0].all() and not windows.loss_mask[:, 1].any()
    ours, module = ours_and_upstream(tiny_checkpoint, variate_labels=True)
    loss = WindowLoss(ours, num_exogenous=1)

    buggy_mask = windows.observed[..., PATCH:].clone()
    buggy_mask[..., -1:] = False  # upstream's: the last time step of every variate
    total, count = loss(windows.series, windows.observed, buggy_mask)
    theirs = upstream_loss(module, upstream_batch(windows, num_exogenous=1))
    assert relative_error(total / (count + EPS), theirs) <= 1e-5
    (total / (count + EPS)).backward()
    theirs.backward()
    assert_gradients_match(ours, module.model)  # labels included: the model path is the same

    ours_total, ours_count = loss(*windows)
    assert ours_count == windows.loss_mask[:, 0].sum() and not math.isclose(ours_total / ours_count, float(theirs))


# --- the compiled step --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learning_data():
    rng = np.random.default_rng(0)
    train = [seasonal(600, phase, rng) for phase in rng.uniform(0, 6, 8)]
    validation = [seasonal(600, phase, rng) for phase in rng.uniform(0, 6, 8)]
    return train, validation


def test_compiled_run_has_no_graph_breaks_or_recompiles(tiny_checkpoint, learning_data, health_backend):
    train, validation = learning_data
    torch._dynamo.reset()
    backbone = Toto.load_from_checkpoint(tiny_checkpoint).model
    options = FitOptions(prediction_length=32, context_length=64, num_steps=12, batch_size=8, validate_every=4,
                         compile=True, show_progress=False)  # fmt: skip
    before = snapshot()
    history = fit_backbone(backbone, train, options, validation)
    stats = snapshot() - before
    assert history.steps == 12 and len(history.validation_loss) == 3
    # One training graph (forward; AOTAutograd also traces its backward) and one validation graph, once each.
    assert stats.as_dict() == {"graph_breaks": 0, "graphs": 2, "recompiles": 0, "cudagraph_skips": 0}


def test_compiled_and_eager_losses_agree(tiny_checkpoint, learning_data):
    train, _ = learning_data
    losses = {}
    for compile in (False, True):
        backbone = Toto.load_from_checkpoint(tiny_checkpoint).model
        options = FitOptions(prediction_length=32, context_length=64, num_steps=5, batch_size=8, learning_rate=1e-3,
                             dropout=0.0, compile=compile, show_progress=False, seed=4)  # fmt: skip
        losses[compile] = fit_backbone(backbone, train, options).train_loss
    assert losses[True][0] != losses[True][-1]  # the weights moved
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc (Linux)")
def test_memory_stays_flat_over_200_compiled_steps(tiny_checkpoint, learning_data, health_backend):
    train, _ = learning_data
    backbone = Toto.load_from_checkpoint(tiny_checkpoint).model.train()
    sampler = WindowSampler(training_series(train), context_length=64, patch_size=PATCH)
    step = TrainingStep(WindowLoss(backbone), trainable_parameters(backbone, "all"), learning_rate=1e-4,
                        min_learning_rate=1e-5, warmup_steps=10, stable_steps=100, decay_steps=90)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    resident = []
    for index in range(200):
        step(sampler.sample(8, generator))
        if index in (19, 199):
            resident.append(_rss_bytes())
    growth = resident[1] - resident[0]
    assert growth < 16 * 2**20, f"resident memory grew {growth / 2**20:.1f} MiB from step 20 to 200"


# --- it learns, and the result is a pipeline -----------------------------------------------------------


def _validation_nll(backbone, windows) -> float:
    """Mean negative log-likelihood of the scored steps, in the scaled space (the scaler has no weights)."""
    with torch.no_grad():
        out = backbone(windows.series[..., :-PATCH], windows.observed[..., :-PATCH], torch.zeros(1, 1, 1, dtype=torch.long))
        scaled = (windows.series[..., PATCH:] - out.loc) / (out.scale + EPS)
        nll = -out.distribution.log_prob(scaled)
    return float(nll[windows.loss_mask].mean())


def _long_frame(series: list[np.ndarray]):
    pd = pytest.importorskip("pandas")
    stamps = pd.date_range("2024-01-01", periods=len(series[0]), freq="h")
    return pd.concat([pd.DataFrame({"item_id": f"s{i}", "timestamp": stamps, "target": s}) for i, s in enumerate(series)])


def test_fine_tuning_learns(tiny_checkpoint, learning_data, record):
    from toto.evaluation import backtest

    train, validation = learning_data
    pipeline = TotoPipeline.from_pretrained(tiny_checkpoint, device_map="cpu", torch_compile=False)
    tuned = pipeline.fit(train, prediction_length=32, context_length=128, num_steps=300, batch_size=16,
                         learning_rate=1e-3, validation_inputs=validation, compile=False, show_progress=False)  # fmt: skip
    windows = last_windows(training_series(validation), context_length=128, patch_size=PATCH, prediction_length=32)
    before, after = _validation_nll(pipeline.model.model, windows), _validation_nll(tuned.model.model, windows)
    frame = _long_frame(validation)
    mase = [backtest(p, frame, prediction_length=32, windows=2, seasonality=24, num_samples=64, seed=0)
            .summary.loc["MASE", "toto"] for p in (pipeline, tuned)]  # fmt: skip
    record("fine-tuning: validation NLL before", before)
    record("fine-tuning: validation NLL after", after)
    record("fine-tuning: backtest MASE before", mase[0])
    record("fine-tuning: backtest MASE after", mase[1])
    assert after < before - 1.0
    assert mase[1] < 0.5 * mase[0]
    # The original pipeline is untouched, and the new one's model is in eval mode, as loaded ones are.
    assert torch.equal(pipeline.model.model.unembed.weight, TotoPipeline.from_pretrained(
        tiny_checkpoint, device_map="cpu").model.model.unembed.weight)  # fmt: skip
    assert not tuned.model.training and tuned.fit_history.best_step is not None
    assert all(p.requires_grad for p in tuned.model.parameters())


def test_saved_model_reloads_bit_identically(tiny_checkpoint, learning_data, tmp_path):
    train, _ = learning_data
    pipeline = TotoPipeline.from_pretrained(tiny_checkpoint, device_map="cpu", torch_compile=False)
    tuned = pipeline.fit([np.stack([s, s[::-1].copy()]) for s in train[:3]], prediction_length=16, context_length=64,
                         num_steps=4, learning_rate=1e-3, num_exogenous=1, add_exogenous_features=True,
                         compile=False, show_progress=False)  # fmt: skip
    written = tuned.save_pretrained(tmp_path / "tuned")
    assert sorted(p.name for p in written) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned"]  # the staging folder is gone
    reloaded = TotoPipeline.from_pretrained(tmp_path / "tuned", device_map="cpu", torch_compile=False)
    assert reloaded.model.model.fusion is not None  # variate labels saved and switched on
    ours, theirs = tuned.model.state_dict(), reloaded.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not torch.equal(ours["model.unembed.weight"], pipeline.model.state_dict()["model.unembed.weight"])
    x, y = (p.predict(torch.from_numpy(train[0][:200]).float(), 16, num_samples=8, seed=0)[0].samples for p in (tuned, reloaded))
    np.testing.assert_array_equal(x, y)


def test_trainable_parts(tiny_checkpoint):
    backbone = Toto.load_from_checkpoint(tiny_checkpoint).model
    everything = trainable_parameters(backbone, "all")
    head = trainable_parameters(backbone, "head")
    last_two = trainable_parameters(backbone, 2)
    assert len(everything) == len(list(backbone.parameters()))
    head_ids = {id(p) for p in [*backbone.unembed.parameters(), *backbone.output_distribution.parameters()]}
    assert {id(p) for p in head} == head_ids
    layer_ids = {id(p) for layer in backbone.transformer.layers[-2:] for p in layer.parameters()}
    assert {id(p) for p in last_two} == head_ids | layer_ids
    with pytest.raises(ValueError, match="trainable"):
        trainable_parameters(backbone, 5)


def test_head_only_training_leaves_the_rest_untouched(tiny_checkpoint, learning_data):
    train, _ = learning_data
    backbone = Toto.load_from_checkpoint(tiny_checkpoint).model
    start = {k: v.clone() for k, v in backbone.state_dict().items()}
    fit_backbone(backbone, train, FitOptions(prediction_length=16, context_length=64, num_steps=3, trainable="head",
                                             learning_rate=1e-2, compile=False, show_progress=False))  # fmt: skip
    changed = {k for k, v in backbone.state_dict().items() if not torch.equal(v, start[k])}
    assert changed and all(k.startswith(("unembed.", "output_distribution.")) for k in changed)


def test_early_stopping_keeps_the_best_weights(tiny_checkpoint, learning_data):
    train, validation = learning_data
    backbone = Toto.load_from_checkpoint(tiny_checkpoint).model
    # A learning rate this large makes validation worse after the first steps.
    options = FitOptions(prediction_length=32, context_length=64, num_steps=200, learning_rate=0.5, warmup_steps=0,
                         max_grad_norm=None, validate_every=2, early_stopping_patience=3, compile=False,
                         show_progress=False)  # fmt: skip
    lines = []
    history = fit_backbone(backbone, train, options, validation, report=lines.append)
    assert history.stopped_early and history.steps < 200
    best_step, best = min(history.validation_loss, key=lambda item: item[1])
    assert history.best_step == best_step and history.steps == best_step + 3 * 2
    assert any("stopping early" in line for line in lines) and any("kept the weights of step" in line for line in lines)
    windows = last_windows(training_series(validation), context_length=64, patch_size=PATCH, prediction_length=32)
    step = TrainingStep(WindowLoss(backbone), trainable_parameters(backbone, "all"), learning_rate=1e-4,
                        min_learning_rate=0, warmup_steps=0, stable_steps=1, decay_steps=0, compile=False)  # fmt: skip
    assert step.evaluate([windows]) == pytest.approx(best, rel=1e-6)


def test_progress_goes_to_stderr(tiny_checkpoint, learning_data, capsys):
    train, validation = learning_data
    pipeline = TotoPipeline.from_pretrained(tiny_checkpoint, device_map="cpu", torch_compile=False)
    pipeline.fit(train, prediction_length=16, context_length=64, num_steps=4, validation_inputs=validation,
                 validate_every=2, compile=False)  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and "train loss" in lines[0] and "validation loss" in lines[0] and "steps/s" in lines[0]


# --- bad input --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("tiny-fit"), TINY_CONFIG, seed=1)
    return TotoPipeline.from_pretrained(checkpoint, device_map="cpu", torch_compile=False)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"context_length": 8}, "context_length 8 is shorter than one patch"),
        ({"context_length": 40}, "context_length 40 is not a multiple of the patch size 16"),
        ({"prediction_length": 400}, r"inputs\[1\] has 300 steps, fewer than 464"),
        ({"num_steps": 0}, "num_steps must be a positive integer"),
        ({"num_steps": -3}, "num_steps must be a positive integer"),
        ({"learning_rate": math.nan}, "learning_rate must be a positive finite number"),
        ({"learning_rate": math.inf}, "learning_rate must be a positive finite number"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"trainable": "body"}, "trainable must be"),
        ({"early_stopping_patience": 2}, "early_stopping_patience needs validation_inputs"),
        ({"precision": "fp16"}, "precision must be one of"),
    ],
)
def test_bad_arguments_are_value_errors_naming_them(tiny_pipeline, change, message):
    arguments = {"prediction_length": 16, "context_length": 64, "num_steps": 2, "compile": False, "show_progress": False}
    inputs = [np.arange(500.0), np.arange(300.0)]
    with pytest.raises(ValueError, match=message):
        tiny_pipeline.fit(inputs, **{**arguments, **change})


def test_all_nan_windows_are_a_value_error_naming_the_series(tiny_pipeline):
    gappy = np.arange(400.0)
    gappy[:] = np.nan
    with pytest.raises(ValueError, match=r"inputs\[1\]: every 80-step window is all NaN"):
        tiny_pipeline.fit([np.arange(400.0), gappy], prediction_length=16, context_length=64, num_steps=2,
                          compile=False, show_progress=False)  # fmt: skip
    # Windows with some NaN are fine, and those with none left to score are skipped.
    partly = np.arange(400.0)
    partly[:200] = np.nan
    sampler = WindowSampler(training_series([partly]), context_length=64, patch_size=PATCH)
    assert len(sampler) == 320 - 137 + 1  # starts whose context reaches step 200 (its scored part then does too)
    with pytest.raises(ValueError, match=r"validation_inputs\[0\]: its last 16 steps are all NaN"):
        tail = np.arange(400.0)
        tail[-16:] = np.nan
        tiny_pipeline.fit([np.arange(400.0)], validation_inputs=[tail], prediction_length=16, context_length=64,
                          num_steps=2, compile=False, show_progress=False)  # fmt: skip


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([np.arange(300.0), np.ones((2, 300))], r"inputs\[1\] has 2 variates but inputs\[0\] has 1"),
        ([np.array([1.0, math.inf] * 150)], r"inputs\[0\] has ±inf at variate 0, step 1"),
        ([], "inputs is empty"),
        ("a series", "inputs must be a list of series"),
        ([["a", "b"]], r"inputs\[0\] must be numeric"),
    ],
)
def test_bad_series_are_errors_naming_the_item(tiny_pipeline, inputs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tiny_pipeline.fit(inputs, prediction_length=16, context_length=64, num_steps=2, compile=False, show_progress=False)


def test_unknown_option_is_a_type_error(tiny_pipeline):
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        tiny_pipeline.fit([np.arange(300.0)], prediction_length=16, context_length=64, num_steps=2, epochs=3)


def test_nan_loss_mid_run_stops_naming_the_step_and_keeps_the_last_good_weights(tiny_pipeline, learning_data, monkeypatch):
    train, _ = learning_data
    calls = {"n": 0}
    original = WindowLoss.forward

    def poisoned(self, series, observed, loss_mask):
        calls["n"] += 1
        total, count = original(self, series, observed, loss_mask)
        return (total * math.nan if calls["n"] == 3 else total), count

    monkeypatch.setattr(WindowLoss, "forward", poisoned)
    seen = []
    monkeypatch.setattr(TrainingStep, "backward", _recording(TrainingStep.backward, seen))
    with pytest.raises(TrainingDiverged, match="step 3: the training loss is nan") as caught:
        tiny_pipeline.fit(train, prediction_length=16, context_length=64, num_steps=10, learning_rate=1e-2,
                          compile=False, show_progress=False)  # fmt: skip
    model = caught.value.model
    assert isinstance(model, Toto) and not model.training
    assert all(torch.isfinite(p).all() and p.requires_grad for p in model.parameters())
    assert seen and torch.equal(model.model.unembed.weight, seen[-1])  # the weights of after step 2


def _recording(method, seen):
    def wrapper(self, windows):
        seen.append(self.loss.backbone.unembed.weight.detach().clone())
        return method(self, windows)

    return wrapper


def test_readme_example_runs(tiny_checkpoint, tmp_path, monkeypatch, capsys, health_backend):
    """The README's fine-tuning example, on the tiny checkpoint instead of the hub's, compiled on
    the health backend (inductor's training step: test_compiled_and_eager_losses_agree)."""
    monkeypatch.setenv("TOTO_COMPILE_BACKEND", HEALTH)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Fine-tuning", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert '"Datadog/Toto-Open-Base-1.0"' in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace('"Datadog/Toto-Open-Base-1.0"', repr(str(tiny_checkpoint))), "README", "exec"), namespace)
    tuned = namespace["tuned"]
    assert tuned.fit_history.validation_loss and namespace["forecast"][0].samples.shape == (1, 1, 64, 128)
    assert TotoPipeline.from_pretrained(tmp_path / "toto-tuned", device_map="cpu").model.config == tuned.model.config
    assert "validation loss" in capsys.readouterr().err


def test_fit_df_reads_a_long_frame_and_names_items_in_errors(tiny_pipeline, learning_data):
    train, validation = learning_data
    frame = _long_frame(train[:3])
    frame["load"] = frame["target"].to_numpy()[::-1]  # an exogenous column
    tuned = tiny_pipeline.fit_df(frame, prediction_length=16, context_length=64, num_steps=3, exogenous=["load"],
                                 add_exogenous_features=True, validation_df=frame, compile=False,
                                 show_progress=False)  # fmt: skip
    assert tuned.model.model.fusion is not None and len(tuned.fit_history.validation_loss) == 3
    short = frame[~((frame["item_id"] == "s1") & (frame.index >= 50))]
    with pytest.raises(ValueError, match=r"inputs\[.s1.\] has 50 steps, fewer than 80"):
        tiny_pipeline.fit_df(short, prediction_length=16, context_length=64, num_steps=3, compile=False)


def test_bfloat16_autocast_trains(tiny_checkpoint, learning_data):
    """``precision="bf16"`` (the CUDA default) also runs on CPU: the same loss to bfloat16's precision."""
    train, _ = learning_data
    losses = {}
    for precision in ("fp32", "bf16"):
        backbone = Toto.load_from_checkpoint(tiny_checkpoint).model
        options = FitOptions(prediction_length=16, context_length=64, num_steps=3, precision=precision, dropout=0.0,
                             compile=False, show_progress=False)  # fmt: skip
        losses[precision] = fit_backbone(backbone, train, options).train_loss
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=5e-2)
    assert losses["bf16"] != losses["fp32"]  # autocast did act
