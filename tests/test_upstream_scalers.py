"""Upstream-compatible scalers (``CausalStdMeanScaler``, ``CausalPatchStdMeanScaler``) against the oracle.

Random series with fractional weights and padding (leading padding and holes,
filled with junk that must be ignored), with and without Bessel correction and
global stabilisation, in float32 and float64.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from oracle import import_oracle

from toto.model.scaler import CausalPatchScaler, CausalPatchStdMeanScaler, CausalStdMeanScaler

BATCH, VARIATE, TIME = 2, 3, 48
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}


@pytest.fixture(scope="module")
def upstream():
    return import_oracle("model.scaler")


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Element-wise relative error, max over elements (b is the reference; exact zeros must match)."""
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs().clamp_min(1e-300)).max().item()


def _inputs(dtype: torch.dtype, seed: int = 0, bool_mask: bool = False):
    """``(data, padding_mask, weights)``: level-100 random walks, some steps padded, weights in (0.25, 1]."""
    gen = torch.Generator().manual_seed(seed)
    shape = (BATCH, VARIATE, TIME)
    data = 100.0 + 4.0 * torch.randn(shape, generator=gen, dtype=torch.float64).cumsum(-1)
    observed = torch.rand(shape, generator=gen) > 0.2
    observed[0, 0, :8] = False  # leading padding, as a left-padded context has
    observed[1, 2, :] = True
    data = torch.where(observed, data, torch.full_like(data, -7.0e3))  # junk where padded
    weights = 0.25 + 0.75 * torch.rand(shape, generator=gen, dtype=torch.float64)
    weights[1, 1, :] = 1.0
    mask = observed if bool_mask else observed.to(dtype)
    return data.to(dtype), mask, weights.to(dtype)


def _assert_matches(ours, theirs, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    for name, mine, ref in zip(("scaled", "loc", "scale"), ours, theirs):
        assert mine.shape == ref.shape and mine.dtype == ref.dtype == dtype, name
    assert max_rel(ours[1], theirs[1]) <= tol, "loc"
    assert max_rel(ours[2], theirs[2]) <= tol, "scale"
    torch.testing.assert_close(ours[0], theirs[0], rtol=tol, atol=tol)


# --------------------------------------------------------------------------- parity with upstream

STABILISE = [
    pytest.param(False, None, id="causal"),
    pytest.param(True, None, id="global-all"),
    pytest.param(True, 24, id="global-prefix24"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bessel", [True, False])
@pytest.mark.parametrize("stabilize,prefix_length", STABILISE)
def test_causal_std_mean_scaler_matches_upstream(upstream, dtype, bessel, stabilize, prefix_length):
    # Exponent 0.1 keeps the clamp to ~[0.8g, 1.26g], so stabilisation actually bites.
    kwargs = dict(minimum_scale=1e-3, use_bessel_correction=bessel, stabilize_with_global=stabilize)
    kwargs["scale_factor_exponent"] = 0.1
    data, mask, weights = _inputs(dtype)
    ours = CausalStdMeanScaler(**kwargs)(data, mask, weights, prefix_length=prefix_length)
    theirs = upstream.CausalStdMeanScaler(**kwargs)(data, mask, weights, prefix_length=prefix_length)
    _assert_matches(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bessel", [True, False])
@pytest.mark.parametrize("patch_size", [1, 4, 16])
@pytest.mark.parametrize("stabilize,prefix_length", STABILISE)
def test_causal_patch_std_mean_scaler_matches_upstream(upstream, dtype, bessel, patch_size, stabilize, prefix_length):
    kwargs = dict(patch_size=patch_size, use_bessel_correction=bessel, stabilize_with_global=stabilize)
    kwargs["scale_factor_exponent"] = 0.1
    data, mask, weights = _inputs(dtype, seed=patch_size)
    ours = CausalPatchStdMeanScaler(**kwargs)(data, mask, weights, prefix_length=prefix_length)
    theirs = upstream.CausalPatchStdMeanScaler(**kwargs)(data, mask, weights, prefix_length=prefix_length)
    _assert_matches(ours, theirs, dtype)


def test_defaults_and_boolean_mask_match_upstream(upstream):
    data, mask, weights = _inputs(torch.float32, seed=5, bool_mask=True)
    for ours, theirs in (
        (CausalStdMeanScaler(), upstream.CausalStdMeanScaler()),
        (CausalPatchStdMeanScaler(patch_size=16), upstream.CausalPatchStdMeanScaler(patch_size=16)),
    ):
        _assert_matches(ours(data, mask, weights), theirs(data, mask, weights), torch.float32)


def test_stabilisation_is_exercised():
    """Guard for the parity tests above: their clamp must change some scales."""
    data, mask, weights = _inputs(torch.float64)
    free = CausalStdMeanScaler(scale_factor_exponent=0.1)(data, mask, weights)[2]
    clamped = CausalStdMeanScaler(stabilize_with_global=True, scale_factor_exponent=0.1)(data, mask, weights)[2]
    assert (free != clamped).float().mean() > 0.1


@pytest.mark.parametrize("ours", [CausalStdMeanScaler, CausalPatchStdMeanScaler], ids=lambda cls: cls.__name__)
def test_constructor_and_call_signatures_match_upstream(upstream, ours):
    theirs = getattr(upstream, ours.__name__)
    for mine, ref in ((ours.__init__, theirs.__init__), (ours.forward, theirs.__call__)):
        mine_params = [(p.name, p.default) for p in inspect.signature(mine).parameters.values()]
        ref_params = [(p.name, p.default) for p in inspect.signature(ref).parameters.values()]
        assert mine_params == ref_params


def test_statistics_are_constants_for_autograd(upstream):
    """As upstream's per-step scaler: gradients reach ``data`` only through ``(data - loc) / scale``."""
    data, mask, weights = _inputs(torch.float64)
    grads = []
    for scaler in (CausalStdMeanScaler(), upstream.CausalStdMeanScaler()):
        x = data.clone().requires_grad_(True)
        scaled, _, scale = scaler(x, mask, weights)
        scaled.sum().backward()
        torch.testing.assert_close(x.grad, 1.0 / scale)
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


# --------------------------------------------------------------------------- our own properties


@pytest.mark.parametrize("patch_size", [1, 4, 16])
def test_patch_statistics_are_those_of_each_patch_end(patch_size):
    data, mask, weights = _inputs(torch.float64, seed=7)
    _, step_loc, step_scale = CausalStdMeanScaler()(data, mask, weights)
    scaled, loc, scale = CausalPatchStdMeanScaler(patch_size=patch_size)(data, mask, weights)
    assert scaled.shape == loc.shape == scale.shape == data.shape
    patches = (BATCH, VARIATE, TIME // patch_size, patch_size)
    for mine, per_step in ((loc, step_loc), (scale, step_scale)):
        expected = per_step.view(patches)[..., -1:].expand(patches)
        assert torch.equal(mine.view(patches), expected)
    torch.testing.assert_close(scaled, (data - loc) / scale)


def test_padded_steps_leave_statistics_unchanged():
    data, mask, weights = _inputs(torch.float64, seed=8)
    _, loc, scale = CausalStdMeanScaler()(data, mask, weights)
    padded = mask[..., 1:] == 0
    assert padded.any()
    assert torch.equal(loc[..., 1:][padded], loc[..., :-1][padded])
    assert torch.equal(scale[..., 1:][padded], scale[..., :-1][padded])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_agrees_with_the_models_scaler(dtype):
    """Bessel-corrected, globally stabilised, unit weights: the same maths as ``CausalPatchScaler``."""
    data, observed, _ = _inputs(dtype, seed=9, bool_mask=True)
    upstream_api = CausalPatchStdMeanScaler(patch_size=8, stabilize_with_global=True, scale_factor_exponent=0.1)
    model_api = CausalPatchScaler(8, stabilize_with_global=True, scale_factor_exponent=0.1)
    ours = upstream_api(data, observed, torch.ones_like(data), prefix_length=32)
    model = model_api(data, observed, prefix_length=32)[:3]
    _assert_matches(ours, model, dtype)


# --------------------------------------------------------------------------- bad input


def test_padding_mask_of_another_shape_is_rejected(upstream):
    data, mask, weights = _inputs(torch.float32)
    broadcastable = mask[:1]  # upstream broadcasts this silently over the batch
    upstream.CausalStdMeanScaler()(data, broadcastable, weights)
    with pytest.raises(ValueError, match="padding_mask"):
        CausalStdMeanScaler()(data, broadcastable, weights)
    with pytest.raises(ValueError, match="padding_mask"):
        CausalPatchStdMeanScaler(patch_size=4)(data, broadcastable, weights)


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda d, m, w: CausalStdMeanScaler()(d, m, w[..., :-1]), "weights"),
        (lambda d, m, w: CausalStdMeanScaler()(d[0], m[0], w[0]), "data"),
        (lambda d, m, w: CausalStdMeanScaler()(d.long(), m, w.long()), "data"),
        (lambda d, m, w: CausalStdMeanScaler()(d, m, w, prefix_length=-1), "prefix_length"),
        (lambda d, m, w: CausalStdMeanScaler()(d, m, w, prefix_length=2.5), "prefix_length"),
        (lambda d, m, w: CausalPatchStdMeanScaler(patch_size=5)(d, m, w), "patch_size"),
        (lambda d, m, w: CausalPatchStdMeanScaler(patch_size=0), "patch_size"),
        (lambda d, m, w: CausalStdMeanScaler(dim=2), "dim"),
        (lambda d, m, w: CausalPatchStdMeanScaler(dim=0), "dim"),
        (lambda d, m, w: CausalStdMeanScaler(minimum_scale=-1.0), "minimum_scale"),
    ],
)
def test_bad_input_names_the_argument(call, argument):
    data, mask, weights = _inputs(torch.float32)
    with pytest.raises((ValueError, TypeError), match=argument):
        call(data, mask, weights)
