"""The folded output head (``TotoBackbone.fast_head``): the two-step head's numbers, and never stale."""

from __future__ import annotations

import pytest
import torch
from checkpoints import TINY_CONFIG, write_checkpoint
from compile_health import steady_state
from parity_inputs import masked_inputs, random_walk

import toto.data.util.dataset as ours_dataset
from toto import Toto, TotoForecaster


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture
def model(tiny_checkpoint):
    return Toto.load_from_checkpoint(tiny_checkpoint).model


def _assert_same_mixture(fast, exact, bound: float, record=None) -> None:
    for name in ("df", "loc", "scale", "logits"):
        error = rel(getattr(fast, name), getattr(exact, name))
        if record is not None:
            record(name, error)
        assert error <= bound, name


@torch.no_grad()
def test_fast_head_equals_the_two_step_head(model, record):
    hidden = torch.randn(2, 3, 5, model.embed_dim)
    fast, exact = model.fast_head(hidden), model.head(hidden)
    assert fast.loc.shape == exact.loc.shape == (2, 3, 5 * model.patch_size, model.config.k_components)
    _assert_same_mixture(fast, exact, 1e-5, record)


@torch.no_grad()
def test_fast_head_follows_changed_weights(model, tmp_path):
    hidden = torch.randn(1, 2, 3, model.embed_dim)
    model.fast_head(hidden)
    model.unembed.weight.mul_(1.5)  # in place: same storage, new version
    _assert_same_mixture(model.fast_head(hidden), model.head(hidden), 1e-5)
    other = Toto.load_from_checkpoint(write_checkpoint(tmp_path / "other", TINY_CONFIG, seed=9)).model
    model.load_state_dict(other.state_dict())  # copied in place over every weight
    _assert_same_mixture(model.fast_head(hidden), other.head(hidden), 1e-5)
    model.output_distribution.loc_proj.bias = torch.nn.Parameter(torch.randn_like(model.output_distribution.loc_proj.bias))
    _assert_same_mixture(model.fast_head(hidden), model.head(hidden), 1e-5)


def test_the_folded_head_is_not_saved(model):
    model.fast_head(torch.randn(1, 1, 1, model.embed_dim))
    assert not any(key.startswith("fused_head") for key in model.state_dict())


@torch.no_grad()
def test_compiled_forecast_refolds_after_a_weight_change_without_recompiling(model):
    """The forecaster refolds on the host before each call; the compiled graphs read the new values in place."""
    patch = model.patch_size
    series = random_walk(1, 2, 3 * patch, level=5.0, seed=41)
    inputs = masked_inputs(ours_dataset, series)
    torch._dynamo.reset()
    compiled = TotoForecaster(model, torch_compile=True, compile_prefill=True)
    calls = [lambda: compiled.forecast(inputs, 3 * patch)]
    old = steady_state(calls)
    assert old.graphs == 0 and old.recompiles == 0 and old.graph_breaks == 0
    before = compiled.forecast(inputs, 3 * patch).mean
    model.unembed.bias.add_(0.3)
    model.output_distribution.loc_proj.weight.mul_(0.7)
    new = steady_state(calls)
    assert new.graphs == 0 and new.recompiles == 0 and new.graph_breaks == 0
    after = compiled.forecast(inputs, 3 * patch).mean
    expected = TotoForecaster(model, torch_compile=False).forecast(inputs, 3 * patch).mean
    assert rel(after, before) > 1e-3  # the change reached the forecast...
    assert rel(after, expected) <= 1e-5  # ...exactly as an eager forecaster sees it
