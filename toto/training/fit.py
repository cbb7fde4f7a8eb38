"""The fine-tuning loop: windows in, a trained backbone out, progress on stderr.

Plain Python over host ints: draw a batch, take a step, now and then validate. Under
``torchrun`` (``torch.distributed`` initialised) every process draws its own batches
from its own random stream, validates its share of the validation windows, and the
losses are reduced across processes; only rank 0 reports.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..model.layers import column_major_linear_weights
from ..model.backbone import TotoBackbone
from ..arguments import check_int, is_real_number
from .step import (
    TrainingDiverged,
    TrainingStep,
    WindowLoss,
    check_optimizer_options,
    check_trainable,
    default_phases,
    trainable_parameters,
)
from .quantile_loss import QuantileWindowLoss, toto2_trainable_parameters
from .windows import WindowSampler, Windows, last_windows, training_series

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class FitOptions:
    """What :func:`fit_backbone` does; every field is checked by :meth:`check`.

    ``batch_size`` is per process. ``dropout=None`` keeps the checkpoint's (0.1 for the
    published one, as upstream fine-tunes). ``precision=None``: bf16 autocast on CUDA,
    fp32 elsewhere. ``validate_every=None``: ten validations per run.
    """

    prediction_length: int
    context_length: int
    num_steps: int
    batch_size: int = 16
    learning_rate: float = 1e-4
    min_learning_rate: float = 1e-5
    warmup_steps: int | None = None
    decay_steps: int | None = None
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    trainable: str | int = "all"
    dropout: float | None = None
    num_exogenous: int = 0
    add_exogenous_features: bool = False
    validate_every: int | None = None
    early_stopping_patience: int | None = None
    seed: int = 0
    compile: bool = True
    precision: str | None = None
    show_progress: bool = True

    def check(self) -> None:
        for name in ("prediction_length", "context_length", "num_steps", "batch_size"):
            check_int(name, getattr(self, name))
        for name in ("warmup_steps", "decay_steps"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=0)
        for name in ("validate_every", "early_stopping_patience"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        check_int("num_exogenous", self.num_exogenous, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if not (is_real_number(self.learning_rate) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive finite number, got {self.learning_rate!r}")
        lr = self.min_learning_rate
        if not (is_real_number(lr) and math.isfinite(lr) and 0 <= lr <= self.learning_rate):
            raise ValueError(f"min_learning_rate must be finite, from 0 to learning_rate ({self.learning_rate}), got {lr!r}")
        check_optimizer_options(self.weight_decay, self.max_grad_norm)
        check_trainable(self.trainable)
        if self.dropout is not None and not (is_real_number(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1) or None, got {self.dropout!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS} or None, got {self.precision!r}")


@dataclass
class FitHistory:
    """What a run did: per-step training losses, ``(step, loss)`` validations, the kept step."""

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None  # the step whose weights were kept (the best validation), None without validation
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.train_loss)


def fit_backbone(
    backbone: TotoBackbone,
    inputs: Any,
    options: FitOptions,
    validation_inputs: Any = None,
    report: Callable[[str], None] | None = None,
    quantile_model: bool = False,
) -> FitHistory:
    """Fine-tune ``backbone`` in place on windows of ``inputs`` and return the history.

    ``quantile_model``: ``backbone`` is a Toto 2.0 model, trained with the pinball loss over
    its knots (:mod:`toto.training.quantile_loss`); it has no dropout or variate labels.

    With ``validation_inputs``, the backbone ends with the weights of its best validation
    (early stopping after ``early_stopping_patience`` validations without improvement).
    A non-finite loss or gradient raises :class:`~toto.training.step.TrainingDiverged`
    naming the step; the backbone then holds the weights from before it.
    """
    options.check()
    if options.early_stopping_patience is not None and validation_inputs is None:
        raise ValueError("early_stopping_patience needs validation_inputs to watch")
    patch = backbone.patch_size
    train_series = training_series(inputs, num_exogenous=options.num_exogenous, name="inputs")
    min_length = options.context_length + max(options.prediction_length, patch)
    sampler = WindowSampler(
        train_series, context_length=options.context_length, patch_size=patch,
        num_exogenous=options.num_exogenous, min_length=min_length, name="inputs",
    )  # fmt: skip
    validation = None
    if validation_inputs is not None:
        validation_series = training_series(
            validation_inputs, num_exogenous=options.num_exogenous, name="validation_inputs"
        )
        if validation_series[0].shape[0] != train_series[0].shape[0]:
            raise ValueError(
                f"validation_inputs have {validation_series[0].shape[0]} variates but inputs have {train_series[0].shape[0]}"
            )
        validation = last_windows(
            validation_series, context_length=options.context_length, patch_size=patch,
            prediction_length=options.prediction_length, num_exogenous=options.num_exogenous,
        )  # fmt: skip

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    report = report if report is not None else (to_stderr if options.show_progress and rank == 0 else silent)
    device = backbone.device
    autocast = torch.bfloat16 if _precision(options, device) == "bf16" else None
    if quantile_model:
        for option in ("dropout", "add_exogenous_features", "num_exogenous"):
            if getattr(options, option):
                raise ValueError(f"{option}: Toto 2.0 has no dropout, variate labels or exogenous variates to train")
        loss, parameters = QuantileWindowLoss(backbone, autocast), toto2_trainable_parameters(backbone, options.trainable)
    else:
        if options.add_exogenous_features and backbone.fusion is None:
            backbone.enable_variate_labels()
        if options.dropout is not None:
            set_dropout(backbone, options.dropout)
        loss = WindowLoss(backbone, options.num_exogenous, autocast)
        parameters = trainable_parameters(backbone, options.trainable)
    warmup, stable, decay = default_phases(options.num_steps, options.warmup_steps, options.decay_steps)
    backbone.train()
    step = TrainingStep(
        loss,
        parameters,
        learning_rate=options.learning_rate, min_learning_rate=options.min_learning_rate,
        warmup_steps=warmup, stable_steps=stable, decay_steps=decay, weight_decay=options.weight_decay,
        max_grad_norm=options.max_grad_norm, compile=options.compile,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + rank)
    every = options.validate_every or max(1, options.num_steps // 10)
    history = FitHistory()
    best_loss, best_state, patience = math.inf, None, options.early_stopping_patience
    started = time.perf_counter()
    try:
        for index in range(1, options.num_steps + 1):
            history.train_loss.append(step(sampler.sample(options.batch_size, generator).to(device)))
            if index % every and index != options.num_steps:
                continue
            line = f"step {index}/{options.num_steps}  train loss {_mean(history.train_loss[-every:]):.4f}"
            if validation is not None:
                backbone.eval()
                loss = step.evaluate(_shard_batches(validation, options.batch_size, rank, world, device))
                backbone.train()
                if not math.isfinite(loss):
                    raise TrainingDiverged(f"step {index}: the validation loss is {loss}")
                history.validation_loss.append((index, loss))
                line += f"  validation loss {loss:.4f}"
                if loss < best_loss:
                    best_loss, history.best_step = loss, index
                    best_state = {n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}
                elif patience is not None and index - history.best_step >= patience * every:
                    history.stopped_early = True
            elapsed = time.perf_counter() - started
            report(f"{line}  lr {step.learning_rate:.2e}  {index / elapsed:.2f} steps/s")
            if history.stopped_early:
                report(f"stopping early: no better validation loss in {patience} validations")
                break
    finally:  # also after a failed step: the model goes back as it came, for inference
        backbone.eval()
        column_major_linear_weights(backbone)  # back to the inference layout (TrainingStep made them contiguous)
        for parameter in backbone.parameters():
            parameter.requires_grad_(True)
        history.seconds = time.perf_counter() - started
    if best_state is not None and history.best_step != history.steps:
        backbone.load_state_dict(best_state, strict=False)  # only the trained parameters changed
        report(f"kept the weights of step {history.best_step} (validation loss {best_loss:.4f})")
    return history


def set_dropout(backbone: TotoBackbone, p: float) -> None:
    """Set every dropout of ``backbone`` (attention weights and MLP outputs) to ``p``."""
    for module in backbone.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = p


def _shard_batches(windows: Windows, batch_size: int, rank: int, world: int, device: torch.device) -> Iterator[Windows]:
    """This process's share of ``windows`` in batches of exactly ``batch_size`` (static shapes):
    the last is topped up with copies of the first window that score nothing."""
    mine = Windows(*(t[rank::world] for t in windows))
    count = mine.series.shape[0]
    for begin in range(0, count, batch_size):
        part = Windows(*(t[begin : begin + batch_size] for t in mine))
        short = batch_size - part.series.shape[0]
        if short:
            filler = Windows(*(t[:1].expand(short, *t.shape[1:]) for t in windows))
            filler = filler._replace(loss_mask=torch.zeros_like(filler.loss_mask))
            part = Windows(*(torch.cat((a, b)) for a, b in zip(part, filler)))
        yield part.to(device)


def _precision(options: FitOptions, device: torch.device) -> str:
    if options.precision is not None:
        return options.precision
    return "bf16" if device.type == "cuda" else "fp32"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def to_stderr(line: str) -> None:
    """A progress line on stderr, flushed."""
    print(line, file=sys.stderr, flush=True)


def silent(line: str) -> None:
    """No progress lines."""
    pass

