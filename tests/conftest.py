from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # share the cores among the workers instead of oversubscribing
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from checkpoints import PUBLISHED_CONFIG, TINY_CONFIG, write_checkpoint  # noqa: E402
from compile_backends import HEALTH  # noqa: E402
from oracle import import_oracle  # noqa: E402

from toto import Toto  # noqa: E402

SIZES = {"tiny": TINY_CONFIG, "full": PUBLISHED_CONFIG}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("tiny"), TINY_CONFIG, seed=1)


@pytest.fixture(scope="session")
def full_checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("full"), PUBLISHED_CONFIG, seed=2)


@pytest.fixture(scope="session", params=["tiny", pytest.param("full", marks=pytest.mark.slow)])
def model_pair(request):
    """(ours, oracle) backbones loaded from the same published-layout checkpoint files."""
    checkpoint = request.getfixturevalue(f"{request.param}_checkpoint")
    upstream = import_oracle("model.toto")
    ours = Toto.load_from_checkpoint(checkpoint).model
    theirs = upstream.Toto.load_from_checkpoint(str(checkpoint)).model.eval()
    return ours, theirs


@pytest.fixture
def broken_torch_compile(monkeypatch):
    """``torch.compile`` whose compiled functions raise "simulated compiler failure" when called."""

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("simulated compiler failure")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)


@pytest.fixture
def health_backend(monkeypatch):
    """``torch.compile`` on the health backend unless a caller names one: for code with no backend
    option (the training step), in tests that check what dynamo does, not inductor's kernels."""
    compile = torch.compile

    def health_compile(model=None, **options):
        options.setdefault("backend", HEALTH)
        return compile(model, **options)

    monkeypatch.setattr(torch, "compile", health_compile)


_PARITY_FIGURES: dict[str, float] = {}


@pytest.fixture
def record(request):
    """Record a measured parity figure under this test's id; printed in the terminal summary."""

    def _record(metric: str, value: float) -> float:
        _PARITY_FIGURES[f"{request.node.name} {metric}"] = value
        return value

    return _record


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: hand its figures to the controller
        workeroutput["parity_figures"] = json.dumps(_PARITY_FIGURES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _PARITY_FIGURES.update(json.loads(getattr(node, "workeroutput", {}).get("parity_figures", "{}")))


def pytest_terminal_summary(terminalreporter):
    if not _PARITY_FIGURES:
        return
    terminalreporter.section("parity figures (max |ours - oracle| / max |oracle|, or max ECDF deviation / bound)")
    for name, value in sorted(_PARITY_FIGURES.items()):
        terminalreporter.write_line(f"{value:10.3e}  {name}")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (2 CPUs, this machine only, no dashboard), shut down at the end.

    Skipped where the ``ray`` extra is not installed (``.ci/run`` installs it).
    """
    ray = pytest.importorskip("ray", reason="the Ray engine needs the extra toto-compiled[ray]")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
