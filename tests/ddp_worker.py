"""One rank of the DDP gradient check, launched by ``tests/test_training_ddp.py`` under ``torchrun``.

Usage: ``torchrun --nproc-per-node=K tests/ddp_worker.py CHECKPOINT BATCH OUT_DIR [--compile [--backend B]]``.

Each rank joins the gloo group, takes its slice ``split(K, rank)`` of the saved batch and
writes ``OUT_DIR/rank{R}.pt`` with:

- ``loss``: the global mean loss :meth:`TrainingStep.backward` reported,
- ``grads``: every parameter's ``.grad`` after that backward (DDP-averaged),
- ``step_loss``, ``params``, ``exp_avg``, ``exp_avg_sq``: after one full optimizer step
  (``TrainingStep.__call__``) on the same slice from the checkpoint's weights,
- ``seconds``: wall time of the backward, then of the step (compile included in the first).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.distributed as dist

from toto.model.toto import Toto
from toto.training import TrainingStep, WindowLoss, Windows, set_dropout, trainable_parameters
from toto.training.distributed import join_from_environment

# Shared with the test's single-process reference: the same step on the same weights.
STEP_OPTIONS = dict(
    learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=0, stable_steps=10, decay_steps=0, max_grad_norm=None
)


def load_backbone(checkpoint: str | Path) -> torch.nn.Module:
    """The checkpoint's backbone in training mode without dropout (deterministic forward)."""
    backbone = Toto.load_from_checkpoint(checkpoint).model
    set_dropout(backbone, 0.0)
    return backbone.train()


def make_step(backbone: torch.nn.Module, compile: bool) -> TrainingStep:
    return TrainingStep(WindowLoss(backbone), trainable_parameters(backbone, "all"), compile=compile, **STEP_OPTIONS)


def load_batch(path: str | Path) -> Windows:
    saved = torch.load(path)
    return Windows(saved["series"], saved["observed"], saved["loss_mask"])


def grads_of(backbone: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.detach().clone() for name, p in backbone.named_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("batch")
    parser.add_argument("out")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend under --compile")
    args = parser.parse_args()
    if args.backend != "inductor":
        compile = torch.compile
        torch.compile = lambda *a, **kw: compile(*a, **{**kw, "backend": args.backend})  # TrainingStep names none

    torch.manual_seed(0)
    device = join_from_environment("cpu")
    assert dist.is_initialized(), "the worker must run under torchrun with WORLD_SIZE > 1"
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = load_batch(args.batch).split(world, rank).to(device)

    backbone = load_backbone(args.checkpoint).to(device)
    step = make_step(backbone, args.compile)
    assert step.distributed and step.world_size == world
    began = time.perf_counter()
    loss = step.backward(mine)
    backward_seconds = time.perf_counter() - began
    grads = grads_of(backbone)

    # One full step from the same weights: backward() only filled .grad, so __call__ starts from them.
    began = time.perf_counter()
    step_loss = step(mine)
    step_seconds = time.perf_counter() - began
    state = step.optimizer.state
    named = list(backbone.named_parameters())
    result = {
        "rank": rank,
        "world_size": world,
        "loss": loss,
        "grads": grads,
        "step_loss": step_loss,
        "params": {name: p.detach().clone() for name, p in named},
        "exp_avg": {name: state[p]["exp_avg"].clone() for name, p in named if p in state},
        "exp_avg_sq": {name: state[p]["exp_avg_sq"].clone() for name, p in named if p in state},
        "seconds": (backward_seconds, step_seconds),
    }
    torch.save(result, Path(args.out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
