"""Kernel launches, measured on CPU: ATen ops dispatched outside compiled graphs in one forecast call.

On a GPU every such op is at least one kernel launch (or a host round trip), while a
compiled graph is one CUDA-graph replay. With the whole call compiled, the count must
not depend on the number of layers (all per-layer work is inside graphs) and must stay
within 40 per call plus 4 per decode step.
"""

from __future__ import annotations

import pytest
import torch
from checkpoints import TINY_CONFIG, write_checkpoint

from toto import Toto, TotoForecaster
from toto.data.util.dataset import masked_timeseries
from toto.compile.diagnostics import count_eager_ops

PER_CALL, PER_STEP = 40, 4
# The benchmark scenarios in patches (S1 context 8 patches, horizon under one, 1,024 samples;
# S2 32 patches, 4 patches ahead, 256 samples; S3 64 patches, 8 ahead, mean only), on the tiny patch.
SCENARIOS = {"S1": (8, 0.125, 1024), "S2": (32, 4, 256), "S3": (64, 8, None)}


def launches(forecaster: TotoForecaster, scenario: str) -> tuple[int, int]:
    """(ops outside compiled graphs in one warm call, decode steps in that call)."""
    context_patches, horizon_patches, num_samples = SCENARIOS[scenario]
    patch = forecaster.model.patch_size
    series = 5 + torch.randn(1, 1, context_patches * patch, generator=torch.Generator().manual_seed(0)).cumsum(-1)
    inputs = masked_timeseries(series)
    horizon = int(horizon_patches * patch)
    kwargs = {"num_samples": num_samples, "samples_per_batch": num_samples or 1}
    forecaster.forecast(inputs, horizon, **kwargs)  # warm-up: compiles
    with count_eager_ops() as ops:
        forecaster.forecast(inputs, horizon, **kwargs)
    steps = -(-horizon // patch) - 1
    return sum(ops.values()), steps


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny model with 2 and with 4 layers (one space-wise layer per two)."""
    built = {}
    for layers in (2, 4):
        folder = write_checkpoint(tmp_path_factory.mktemp(f"layers{layers}"), {**TINY_CONFIG, "num_layers": layers}, seed=3)
        built[layers] = Toto.load_from_checkpoint(folder).model
    return built


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(model, backend: str) -> TotoForecaster:
    return TotoForecaster(model, torch_compile=True, compile_prefill=True, compile_backend=backend)


# What runs outside the graphs does not depend on the backend that compiles them, so the
# layer comparison uses aot_eager (dynamo and AOTAutograd, no code generation: seconds
# instead of minutes on CPU); one inductor run checks that it counts the same.
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_whole_call_compiled_launches_do_not_grow_with_layers(models, scenario):
    counts = {}
    for layers, model in models.items():
        forecaster = compiled(model, "aot_eager")
        counts[layers], steps = launches(forecaster, scenario)
        assert forecaster.compiled and forecaster.compile_error is None
    assert counts[2] == counts[4], counts
    assert counts[4] <= PER_CALL + PER_STEP * steps, (counts, steps)


def test_inductor_counts_the_same_launches(models):
    by_backend = {backend: launches(compiled(models[4], backend), "S3") for backend in ("aot_eager", "inductor")}
    assert by_backend["inductor"] == by_backend["aot_eager"]


def test_eager_launches_grow_with_layers(models):
    """The counter has teeth: eagerly, per-layer work is counted op by op."""
    counts = {layers: launches(TotoForecaster(model, torch_compile=False), "S3")[0] for layers, model in models.items()}
    assert counts[4] > counts[2] + 100 * 8  # 8 decode steps, each with two more layers' ops
