"""Toto 2.0 against upstream's ``toto-2`` 2.0.0 (the oracle), on checkpoints the oracle wrote
with its own ``save_pretrained``: the teacher-forced pass and ``forecast`` with block decoding,
eager and compiled, for each config flag a published checkpoint may set."""

from __future__ import annotations

import pytest
import torch
from checkpoints import PUBLISHED_TOTO2_CONFIGS
from compile_backends import HEALTH
from oracle import import_toto2_oracle

from toto.checkpoints.reading import resolve_checkpoint
from toto.compile.policy import CompileSettings
from toto.inference.toto2_forecaster import Toto2Forecaster
from toto.toto2.loading import load_toto2

BASE = {"patch_size": 8, "d_model": 32, "num_heads": 4, "num_layers": 4, "layer_group_size": 2,
        "num_variate_layers_per_group": 1, "variate_layer_first": False, "residual_attn_ratio": 1.3}  # fmt: skip
PUBLISHED_FLAGS = {k: v for k, v in PUBLISHED_TOTO2_CONFIGS["4m"].items() if k not in ("d_model", "d_ff", "num_heads",
                   "num_groups", "num_layers", "layer_group_size", "qk_dim", "v_dim", "patch_size")}  # fmt: skip
FLAGS = {
    "defaults": {},
    "grouped-heads": {"num_groups": 2},
    "qk-norm-weights": {"norm_include_weight": True},
    "qk-norm-own-weights": {"qk_norm_include_weight": True},
    "no-qk-norm": {"qk_norm": False},
    "per-dim-scale": {"per_dim_scale": True},
    "xpos": {"use_xpos": True},
    "variate-layer-first": {"variate_layer_first": True},
    "biases": {"attn_bias": True, "mlp_bias": True},
    "wide-values": {"v_dim": 12, "d_ff": 40},
    "two-output-patches": {"num_output_patches": 2},
    "published": PUBLISHED_FLAGS,
}


def rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max()).item()


def oracle_checkpoint(tmp_path_factory, flags: dict):
    """The oracle's model with non-trivial norm weights, scales and biases, saved by itself; and ours loaded from it."""
    Theirs, TheirConfig = import_toto2_oracle()
    torch.manual_seed(3)
    theirs = Theirs(TheirConfig(**{**BASE, **flags})).eval()
    with torch.no_grad():
        for name, parameter in theirs.named_parameters():
            if "norm" in name or "per_dim_scale" in name or "bias" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    directory = tmp_path_factory.mktemp("toto2")
    theirs.save_pretrained(directory)
    return theirs, load_toto2(resolve_checkpoint(directory))


@pytest.fixture(scope="module", params=list(FLAGS))
def pair(request, tmp_path_factory):
    return request.param, *oracle_checkpoint(tmp_path_factory, FLAGS[request.param])


@pytest.fixture(scope="module", params=[name for name in FLAGS if name != "two-output-patches"])
def forecast_pair(request, tmp_path_factory):
    """Upstream's forecast fails for num_output_patches > 1: test_extra_output_patches_are_not_read instead."""
    return request.param, *oracle_checkpoint(tmp_path_factory, FLAGS[request.param])


@pytest.fixture(scope="module")
def published_pair(tmp_path_factory):
    return oracle_checkpoint(tmp_path_factory, FLAGS["published"])


def series(batch: int, variates: int, length: int, missing: bool, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random walks; with ``missing``, 20% of values missing and series 1 starting 30 steps late (ragged)."""
    gen = torch.Generator().manual_seed(seed)
    values = 5 + 3 * torch.randn(batch, variates, length, generator=gen).cumsum(-1)
    observed = torch.ones_like(values, dtype=torch.bool)
    if missing:
        observed = torch.rand(values.shape, generator=gen) > 0.2
        observed[1, :, :30] = False
    return values, observed


def upstream_forecast(theirs, values, observed, horizon: int, block: int) -> torch.Tensor:
    """Upstream needs whole patches: it gets the same left padding we add, marked missing."""
    padding = -values.shape[-1] % BASE["patch_size"]
    values, observed = torch.nn.functional.pad(values, (padding, 0)), torch.nn.functional.pad(observed, (padding, 0))
    inputs = {"target": values, "target_mask": observed,
              "series_ids": torch.zeros(values.shape[:2], dtype=torch.long)}  # fmt: skip
    with torch.no_grad():
        return theirs.forecast(inputs, horizon, decode_block_size=block, has_missing_values=not bool(observed.all()))


@torch.no_grad()
def test_teacher_forced_pass_matches_upstream(pair, record):
    name, theirs, ours = pair
    values, observed = series(3, 2, 80, missing=True)
    ids = torch.zeros(3, 2, dtype=torch.long)
    expected, expected_loc, expected_scale = theirs(values, observed, torch.ones_like(observed), ids)
    quantiles, loc, scale = ours(values, observed)
    assert quantiles.shape == expected.shape
    assert record("quantiles", rel(quantiles, expected)) <= 1e-4
    patch = BASE["patch_size"]
    torch.testing.assert_close(loc, expected_loc[..., patch - 1 :: patch], rtol=0, atol=0)
    torch.testing.assert_close(scale, expected_scale[..., patch - 1 :: patch], rtol=0, atol=0)


# (batch, variates, context, horizon, decode_block_size, missing): one block; several blocks
# with a short last one; multivariate with missing values and ragged lengths; one-patch blocks.
CASES = {
    "one-block": (2, 1, 64, 20, 0, False),
    "blocks-multivariate-missing": (3, 2, 83, 44, 16, True),
    "blocks-of-one-patch": (1, 1, 64, 40, 8, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forecast_matches_upstream(forecast_pair, case, record):
    name, theirs, ours = forecast_pair
    batch, variates, length, horizon, block, missing = CASES[case]
    values, observed = series(batch, variates, length, missing)
    expected = upstream_forecast(theirs, values, observed, horizon, block)
    forecast = Toto2Forecaster(ours).forecast(values, observed, horizon, block)
    assert forecast.shape == expected.shape == (9, batch, variates, horizon)
    assert record("quantiles", rel(forecast, expected)) <= 1e-4


def test_extra_output_patches_are_not_read(tmp_path_factory):
    """With num_output_patches > 1 (which upstream's forecast cannot decode), each block's
    first patch is the teacher-forced pass's next patch: the further ones are not used."""
    _, ours = oracle_checkpoint(tmp_path_factory, FLAGS["two-output-patches"])
    values, observed = series(2, 1, 64, missing=False)
    with torch.no_grad():
        quantiles, loc, scale = ours(values, observed)
    next_patch = (quantiles[:, :, :, -1, :8].sinh() * scale[..., -1, None] + loc[..., -1, None]).sort(0).values
    forecast = Toto2Forecaster(ours).forecast(values, observed, 8, 0)
    torch.testing.assert_close(forecast, next_patch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["blocks-multivariate-missing"])
def test_compiled_forecast_matches_upstream(published_pair, case, record):
    theirs, ours = published_pair
    batch, variates, length, horizon, block, missing = CASES[case]
    values, observed = series(batch, variates, length, missing)
    expected = upstream_forecast(theirs, values, observed, horizon, block)
    forecaster = Toto2Forecaster(ours, CompileSettings(enabled=True))
    forecast = forecaster.forecast(values, observed, horizon, block)
    assert forecaster.compiled and forecaster.compile_error is None
    assert record("quantiles", rel(forecast, expected)) <= 1e-4


def test_contexts_of_one_bucket_share_the_graphs(published_pair):
    """Warm on one context length; every other length of its capacity bucket, with one block
    or several, then runs under ``fail_on_recompile``: no new graph, no recompile, no break."""
    from toto.compile.health import steady_state as health

    _, ours = published_pair
    forecaster = Toto2Forecaster(ours, CompileSettings(enabled=True, backend=HEALTH))

    def call(length: int, horizon: int):
        return lambda: forecaster.forecast(*series(2, 2, length, missing=True), horizon, 16)

    checked = health([call(length, horizon) for length in (91, 128) for horizon in (9, 40)],
                     warmup=[call(70, 9), call(70, 40)])  # fmt: skip
    assert checked.warm.graphs >= 2  # the first block's graph and the later blocks'
    assert (checked.graph_breaks, checked.new_in_steady_state) == (0, 0)


def test_bfloat16_compiled_stays_close_to_float32(published_pair, record):
    """bfloat16 weights, compiled: the scaler's statistics stay in float64 and the quantiles come
    back in float32, within bfloat16's rounding of the float32 forecast."""
    import copy

    _, ours = published_pair
    values, observed = series(2, 2, 83, missing=True)
    reference = Toto2Forecaster(ours).forecast(values, observed, 44, 16)
    forecaster = Toto2Forecaster(copy.deepcopy(ours).to(torch.bfloat16), CompileSettings(enabled=True))
    forecast = forecaster.forecast(values, observed, 44, 16)
    assert forecaster.compiled and forecaster.compile_error is None and forecast.dtype == torch.float32
    assert record("bfloat16 vs float32", rel(forecast, reference)) <= 3e-2
