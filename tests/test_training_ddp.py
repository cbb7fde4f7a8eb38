"""DistributedDataParallel fine-tuning on CPU (gloo, 2 processes on localhost under ``torchrun``)
against one process on the concatenated batch: the reported loss, the gradients after one
backward, and the weights and AdamW state after one full step.

The batch's two halves score different numbers of steps (NaN in the second), so only a
reduction of the loss *sum* and *count* across processes gives the global mean's
gradient; ``test_a_per_rank_mean_would_fail`` shows the per-rank mean is far outside the
tolerance here.

Tolerance: per tensor, ``max|ddp - ref| / max|ref| <= 1e-5``. An elementwise relative error
is meaningless for the many gradient entries near zero (a sum over a batch split in two
differs from the whole batch's by float32 rounding, ~1e-7 of the tensor's scale, whatever
the entry's own size); scaling by the tensor's largest entry is the usual normwise measure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from compile_backends import HEALTH
from ddp_worker import load_backbone, make_step

from toto.training import WindowLoss, Windows, WindowSampler
from toto.training.step import EPS

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
WORLD = 2
TOLERANCE = 1e-5
CONTEXT = 64  # four patches of the tiny checkpoint's 16 steps
LAUNCH_TIMEOUT = 120  # seconds
COMPILED_LAUNCH_TIMEOUT = 240  # measured on 2 cores: 33-84 s with a cold inductor cache (load-dependent), ~10 s warm


def max_relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``max|ours - reference| / max|reference|`` (the absolute error where the reference is all zero)."""
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item()
    return error / scale if scale > 0 else error


def compare(ours: dict[str, torch.Tensor | None], reference: dict[str, torch.Tensor | None], what: str) -> float:
    """Assert every tensor of ``ours`` is within ``TOLERANCE`` of ``reference``; return the worst error."""
    assert ours.keys() == reference.keys(), f"{what}: different parameters"
    worst, worst_name = 0.0, None
    for name, ref in reference.items():
        mine = ours[name]
        assert (mine is None) == (ref is None), f"{what}[{name}]: one side has no tensor"
        if ref is None:
            continue
        assert mine.shape == ref.shape, f"{what}[{name}]: shape {tuple(mine.shape)} != {tuple(ref.shape)}"
        error = max_relative_error(mine, ref)
        if error > worst or worst_name is None:
            worst, worst_name = error, name
    assert worst <= TOLERANCE, f"{what}: max relative error {worst:.3e} (> {TOLERANCE}) in {worst_name}"
    return worst


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def batch() -> Windows:
    """Six windows of 2-variate series, three per rank; the second half has NaN runs in both variates."""
    gen = torch.Generator().manual_seed(3)
    length = 160
    series = [
        torch.stack([10 + torch.randn(length, generator=gen).cumsum(0), 2 * torch.randn(length, generator=gen)])
        for _ in range(3)
    ]
    series[2][0, 70:100] = float("nan")  # a gap crossing the context and the scored steps
    series[2][1, 20:45] = float("nan")
    series[2][1, 130:] = float("nan")  # the tail of the second variate is never observed
    sampler = WindowSampler(series, context_length=CONTEXT, patch_size=16)
    # Rank 0: windows of the complete series; rank 1: three windows of the gappy one.
    return sampler.windows([0, 1, 0, 2, 2, 2], [0, 40, 75, 10, 40, 80])


@pytest.fixture(scope="module")
def batch_file(batch, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "batch.pt"
    torch.save(batch._asdict(), path)
    return path


def test_the_halves_score_different_numbers_of_steps(batch):
    counts = [int(batch.split(WORLD, rank).loss_mask.sum()) for rank in range(WORLD)]
    assert counts[0] != counts[1] and min(counts) > 0, counts
    assert sum(counts) == int(batch.loss_mask.sum())


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, batch) -> dict:
    """One process on the whole batch: the loss and gradients of a backward, then one full step."""
    backbone = load_backbone(tiny_checkpoint)
    step = make_step(backbone, compile=False)
    assert not step.distributed
    start = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    loss = step.backward(batch)
    grads = {name: p.grad.detach().clone() for name, p in backbone.named_parameters()}
    step_loss = step(batch)
    state = step.optimizer.state
    named = list(backbone.named_parameters())
    return {
        "start": start,
        "loss": loss,
        "grads": grads,
        "step_loss": step_loss,
        "params": {name: p.detach().clone() for name, p in named},
        "exp_avg": {name: state[p]["exp_avg"].clone() for name, p in named},
        "exp_avg_sq": {name: state[p]["exp_avg_sq"].clone() for name, p in named},
    }


def launch(checkpoint: Path, batch_file: Path, out: Path, *extra: str, timeout: float) -> tuple[list[dict], float]:
    """Run the worker on ``WORLD`` gloo processes; the ranks' results and the wall time."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        str(WORKER), str(checkpoint), str(batch_file), str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = out / "torchrun.log"  # a file, not a pipe: a worker left behind cannot keep a read from ending
    began = time.perf_counter()
    with open(log, "w") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(process)
            pytest.fail(f"torchrun did not finish within {timeout} s:\n{log.read_text()[-12000:]}")
    seconds = time.perf_counter() - began
    output = f"exit status {process.returncode}\n{log.read_text()[-12000:]}"
    assert process.returncode == 0, f"torchrun failed:\n{output}"
    results = []
    for rank in range(WORLD):
        path = out / f"rank{rank}.pt"
        assert path.exists(), f"rank {rank} wrote nothing:\n{output}"
        results.append(torch.load(path))
    return results, seconds


def stop(process: subprocess.Popen) -> None:
    """End torchrun and its workers. Its workers run in sessions of their own, so SIGTERM to torchrun
    (which then terminates them) comes first; SIGKILL to its process group only if that fails."""
    process.terminate()
    try:
        process.wait(timeout=40)  # torchrun waits up to 30 s for its workers before killing them
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def eager_ranks(tiny_checkpoint, batch_file, tmp_path_factory) -> list[dict]:
    ranks, _ = launch(tiny_checkpoint, batch_file, tmp_path_factory.mktemp("eager"), timeout=LAUNCH_TIMEOUT)
    return ranks


def check_gradients(ranks: list[dict], reference: dict, record) -> None:
    for rank, result in enumerate(ranks):
        assert result["rank"] == rank and result["world_size"] == WORLD
        assert result["loss"] == pytest.approx(reference["loss"], rel=1e-6), f"rank {rank}"
        record(f"rank{rank} loss", abs(result["loss"] - reference["loss"]) / abs(reference["loss"]))
        record(f"rank{rank} grads", compare(result["grads"], reference["grads"], f"rank {rank} grads"))
    # DDP averaged the same all-reduced buckets on every rank.
    for name, grad in ranks[0]["grads"].items():
        assert torch.equal(grad, ranks[1]["grads"][name]), f"the ranks' gradients of {name} differ"


def test_ddp_gradients_equal_single_process(eager_ranks, reference, record):
    check_gradients(eager_ranks, reference, record)


def test_ddp_step_equals_single_process_step(eager_ranks, reference, record):
    for rank, result in enumerate(eager_ranks):
        assert result["step_loss"] == pytest.approx(reference["step_loss"], rel=1e-6), f"rank {rank}"
        # The worst weight (~6e-6 here) is a space-wise key bias: its true gradient is zero, and AdamW's
        # first step scales rounding noise g to lr * g / (|g| + eps); the moments below show the reduction.
        record(f"rank{rank} params", compare(result["params"], reference["params"], f"rank {rank} params"))
        # AdamW's first update is nearly lr * sign(grad), blind to a gradient's scale; its moments are not.
        record(f"rank{rank} exp_avg", compare(result["exp_avg"], reference["exp_avg"], f"rank {rank} exp_avg"))
        second = compare(result["exp_avg_sq"], reference["exp_avg_sq"], f"rank {rank} exp_avg_sq")
        record(f"rank{rank} exp_avg_sq", second)
    for name, weight in eager_ranks[0]["params"].items():
        assert torch.equal(weight, eager_ranks[1]["params"][name]), f"the ranks' weights of {name} differ"
    # The step moved the weights well beyond the tolerance (a no-op step would pass the comparisons above).
    moved = max(max_relative_error(reference["start"][name], weight) for name, weight in reference["params"].items())
    assert moved > 100 * TOLERANCE, moved


def test_a_per_rank_mean_would_fail(tiny_checkpoint, batch, reference, record):
    """Averaging each half's own mean loss (no sum/count reduction) misses the reference by far more than
    the tolerance: the gradient test above can fail."""
    backbone = load_backbone(tiny_checkpoint)
    loss = WindowLoss(backbone)
    for half in range(WORLD):
        total, count = loss(*batch.split(WORLD, half))
        (total / (count + EPS) / WORLD).backward()  # accumulates the average of the per-half gradients
    naive = {name: p.grad for name, p in backbone.named_parameters()}
    worst = max(max_relative_error(naive[name], ref) for name, ref in reference["grads"].items())
    record("per-rank mean grads", worst)
    assert worst > 100 * TOLERANCE, worst


def test_compiled_ddp_gradients_equal_single_process(tiny_checkpoint, batch_file, reference, tmp_path, record):
    """``TrainingStep(compile=True)`` under DDP: ``torch.compile`` of the DDP module (DDPOptimizer splits
    the graph at gradient buckets) gives the single eager process's loss and gradients.

    The weights after the step are compared across ranks only: a compiled kernel rounds differently
    from the eager reference, and AdamW's first step turns the rounding noise that stands for an
    exactly-zero gradient (the key bias of the space-wise layers, which have no rotary embedding:
    softmax ignores it) into updates of ``lr * noise / (|noise| + eps)``, 5e-5 of that weight here:
    not a sign of a wrong reduction.

    On the health backend: the graph splitting at buckets is dynamo's; inductor's training
    kernels are checked in one process by test_training's compiled-and-eager test."""
    ranks, _ = launch(tiny_checkpoint, batch_file, tmp_path, "--compile", "--backend", HEALTH,
                      timeout=COMPILED_LAUNCH_TIMEOUT)  # fmt: skip
    check_gradients(ranks, reference, record)
    for name, weight in ranks[0]["params"].items():
        assert torch.equal(weight, ranks[1]["params"][name]), f"the ranks' weights of {name} differ"
