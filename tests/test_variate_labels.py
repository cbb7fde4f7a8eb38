"""Variate labels (upstream's ``enable_variate_labels``): a label token per variate, prepended once.

A checkpoint fine-tuned with exogenous features holds ``model.target_variate_label`` and
``model.exogenous_variate_label``. Parity is measured against the oracle given the same
weights: its backbone is loaded from the same file without the labels, then labelled with
``enable_variate_labels()`` and the file's label values.
"""

from __future__ import annotations

import pytest
import torch
from checkpoints import TINY_CONFIG, random_published_state, write_checkpoint
from compile_backends import HEALTH
from compile_health import steady_state
from oracle import import_oracle
from parity_inputs import masked_inputs, random_walk

import toto.data.util.dataset as ours_dataset
from toto import Toto, TotoForecaster
from toto.checkpoints.reading import CheckpointError
from toto.model.fusion import Fusion

LABELS = ("model.target_variate_label", "model.exogenous_variate_label")


def rel(ours: torch.Tensor, oracle: torch.Tensor) -> float:
    return ((ours.double() - oracle.double()).abs().max() / oracle.double().abs().max()).item()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    state = random_published_state(TINY_CONFIG, seed=4, variate_labels=True)
    root = tmp_path_factory.mktemp("labels")
    labelled = write_checkpoint(root / "labelled", TINY_CONFIG, state=state)
    plain = write_checkpoint(root / "plain", TINY_CONFIG, state={k: v for k, v in state.items() if k not in LABELS})
    return labelled, plain, state


@pytest.fixture(scope="module")
def models(checkpoints):
    labelled, plain, state = checkpoints
    ours = Toto.load_from_checkpoint(labelled).model
    theirs = import_oracle("model.toto").Toto.load_from_checkpoint(str(plain)).model.eval()
    theirs.enable_variate_labels()
    with torch.no_grad():
        theirs.target_variate_label.copy_(state[LABELS[0]])
        theirs.exogenous_variate_label.copy_(state[LABELS[1]])
    return ours, theirs


def _series(patches: int, variates: int = 3, seed: int = 21) -> torch.Tensor:
    return random_walk(2, variates, patches * TINY_CONFIG["patch_size"], level=20.0, seed=seed)


def _masks(series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones_like(series, dtype=torch.bool), torch.zeros_like(series, dtype=torch.int)


def test_labels_load_only_from_a_checkpoint_that_has_them(checkpoints, models):
    ours, _ = models
    assert ours.num_prepended_tokens == 1 and isinstance(ours.fusion, Fusion)
    plain = Toto.load_from_checkpoint(checkpoints[1]).model
    assert plain.num_prepended_tokens == 0 and plain.fusion is None
    assert not any("variate_label" in key for key in plain.state_dict())


def test_one_label_without_the_other_is_refused(checkpoints, tmp_path):
    state = dict(checkpoints[2])
    del state[LABELS[0]]
    path = write_checkpoint(tmp_path / "half", TINY_CONFIG, state=state)
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing keys \['model.target_variate_label'\]"):
        Toto.load_from_checkpoint(path)


@pytest.mark.parametrize("exogenous", [0, 1, 2])
@torch.no_grad()
def test_forward_matches_upstream(models, exogenous, record):
    ours, theirs = models
    series = _series(4)
    observed, ids = _masks(series)
    observed[1, 0, :30] = False
    a = ours(series, observed, ids, num_exogenous_variables=exogenous)
    b = theirs(series, observed, ids, num_exogenous_variables=exogenous)
    assert a.distribution.mean.shape == b.distribution.mean.shape
    assert record("mean", rel(a.distribution.mean, b.distribution.mean)) <= 1e-5
    assert record("scale", rel(a.distribution.variance, b.distribution.variance)) <= 1e-5


@torch.no_grad()
def test_the_labels_decide_the_output(models):
    """The parity above is not vacuous: swapping the two labels moves the forward far past its threshold."""
    ours, theirs = models
    series = _series(4)
    observed, ids = _masks(series)
    reference = theirs(series, observed, ids, num_exogenous_variables=1).distribution.mean
    target, exogenous = ours.target_variate_label.detach().clone(), ours.exogenous_variate_label.detach().clone()
    try:
        ours.target_variate_label.copy_(exogenous)
        ours.exogenous_variate_label.copy_(target)
        moved = ours(series, observed, ids, num_exogenous_variables=1).distribution.mean
    finally:
        ours.target_variate_label.copy_(target)
        ours.exogenous_variate_label.copy_(exogenous)
    assert rel(moved, reference) > 1e-2


@torch.no_grad()
def test_kv_cache_counts_the_label_token_as_upstream(models, record):
    ours, theirs = models
    patch = ours.patch_size
    series = _series(6)
    observed, ids = _masks(series)
    ours_cache = ours.allocate_kv_cache(2, 3, series.shape[-1])
    theirs_cache = theirs.allocate_kv_cache(2, 3, series.shape[-1] + patch, "cpu", torch.float32)
    worst = 0.0
    for patches in (3, 4, 5, 6):
        t = patches * patch
        args = (series[..., :t], observed[..., :t], ids[..., :t])
        a = ours(*args, kv_cache=ours_cache, num_exogenous_variables=1).distribution.mean
        b = theirs(*args, kv_cache=theirs_cache, num_exogenous_variables=1).distribution.mean
        assert ours_cache.current_len(0) == int(theirs_cache.current_len(0)) == patches + 1
        worst = max(worst, rel(a[..., -patch:], b[..., -patch:]))
    assert record("per-step mean", worst) <= 1e-5


@pytest.mark.parametrize("mode", ["cached", "compiled", "uncached"])
@pytest.mark.parametrize("exogenous, known", [(0, False), (1, True), (1, False), (2, True)])
@torch.no_grad()
def test_mean_forecast_matches_upstream(models, mode, exogenous, known, record):
    ours, theirs = models
    patch = ours.patch_size
    horizon = 2 * patch + 5  # not a whole number of patches
    full = random_walk(2, 3, 3 * patch + 7 + horizon, level=20.0, seed=23)
    series, future = full[..., :-horizon].contiguous(), full[:, 3 - exogenous :, -horizon:].contiguous()
    future = future if known else None
    use_cache = mode != "uncached"
    if mode == "compiled":
        torch._dynamo.reset()
    forecaster = TotoForecaster(ours, torch_compile=mode == "compiled", compile_prefill=mode == "compiled")
    a = forecaster.forecast(
        masked_inputs(ours_dataset, series, exogenous), horizon, use_kv_cache=use_cache, future_exogenous_variables=future
    )
    b = import_oracle("inference.forecaster").TotoForecaster(theirs).forecast(
        masked_inputs(import_oracle("data.util.dataset"), series, exogenous),
        horizon,
        use_kv_cache=use_cache,
        future_exogenous_variables=future,
    )
    assert a.mean.shape == b.mean.shape == (2, 3, horizon)
    assert record("mean", rel(a.mean, b.mean)) <= 1e-4


@torch.no_grad()
def test_compiled_decoding_with_labels_adds_no_graph_or_recompile(models):
    ours, _ = models
    patch = ours.patch_size
    torch._dynamo.reset()
    forecaster = TotoForecaster(ours, torch_compile=True, compile_prefill=True, compile_backend=HEALTH)
    full = random_walk(2, 3, 5 * patch, level=20.0, seed=24)
    with_future, plain = masked_inputs(ours_dataset, full[..., : 3 * patch], 1), masked_inputs(ours_dataset, full[..., : 3 * patch], 0)
    shorter = masked_inputs(ours_dataset, full[..., : 2 * patch + 3], 1)  # another context length, same bucket
    future = full[:, -1:, 3 * patch :]
    calls = [
        lambda: forecaster.forecast(with_future, 2 * patch, future_exogenous_variables=future),
        lambda: forecaster.forecast(plain, 2 * patch),
        lambda: forecaster.forecast(shorter, 2 * patch),
        lambda: forecaster.forecast(with_future, 2 * patch, 8, 4, future_exogenous_variables=future),
    ]
    steady = steady_state(calls)
    assert steady.graphs == 0 and steady.recompiles == 0 and steady.graph_breaks == 0


def test_fusion_prepends_unit_length_labels():
    embeddings = torch.randn(2, 3, 4, 8)
    labels = 5.0 * torch.randn(2, 3, 1, 8)
    fused = Fusion()(embeddings, labels)
    assert fused.shape == (2, 3, 5, 8)
    assert torch.equal(fused[:, :, 1:], embeddings)
    torch.testing.assert_close(fused[:, :, :1], labels / labels.norm(dim=-1, keepdim=True))
    assert Fusion()(embeddings) is embeddings
