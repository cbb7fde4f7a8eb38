"""One training step: forward and loss (compiled, static shapes), backward, clipping, AdamW, schedule.

The loss is upstream's: the combined loss of the targets scaled by the model's own loc and scale,
summed over the scored steps and divided by their count. Across processes the sum and the count
are all-reduced first; each process back-propagates ``world_size * local_sum / global_count`` so
that DDP's gradient average is exactly the gradient of the global mean. Exogenous variates are
left out of the loss (``Windows.loss_mask``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..model.backbone import TotoBackbone
from ..arguments import is_real_number
from .loss import combined_loss
from .schedule import warmup_stable_decay
from .windows import Windows

EPS = torch.finfo(torch.float32).eps  # upstream's: that of the float32 series
ADAM_EPS = 1e-7  # upstream's AdamW eps (not torch's 1e-8)


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient; the weights are those before the failed step."""


class WindowLoss(nn.Module):
    """``(sum of the loss over scored steps, their count)`` for a batch of windows.

    ``forward`` is the training graph, ``evaluate`` the validation one: two code objects,
    so compiling both never recompiles either.
    """

    def __init__(self, backbone: TotoBackbone, num_exogenous: int = 0, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.backbone = backbone
        self.num_exogenous = num_exogenous
        self.autocast_dtype = autocast_dtype

    def forward(self, series: Tensor, observed: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self._terms(series, observed, loss_mask)

    def evaluate(self, series: Tensor, observed: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self._terms(series, observed, loss_mask)

    def _terms(self, series: Tensor, observed: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
        patch = self.backbone.patch_size
        context, targets = series[..., :-patch], series[..., patch:]
        ids = torch.zeros(1, 1, 1, dtype=torch.long, device=series.device)  # one group: every variate sees the others
        with torch.autocast(series.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out = self.backbone(context, observed[..., :-patch], ids, num_exogenous_variables=self.num_exogenous)
        # The scaler's loc and scale are float32 from float64 statistics; the mixture promotes to float32.
        scaled_targets = (targets - out.loc) / (out.scale + EPS)
        losses = combined_loss(out.distribution, scaled_targets)
        return torch.where(loss_mask, losses, 0.0).sum(), loss_mask.sum()


def trainable_parameters(backbone: TotoBackbone, trainable: str | int) -> list[nn.Parameter]:
    """Freeze all but ``trainable``: ``"all"``, ``"head"`` (unembed and mixture head), or an int N
    (the last N transformer layers and the head). Variate labels, when enabled, always train."""
    layers = len(backbone.transformer.layers)
    check_trainable(trainable, layers)
    if trainable == "all":
        chosen: Iterable[nn.Module] = [backbone]
    else:
        last = 0 if trainable == "head" else int(trainable)
        chosen = [backbone.unembed, backbone.output_distribution, *backbone.transformer.layers[layers - last :]]
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    for module in chosen:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    for label in (backbone.target_variate_label, backbone.exogenous_variate_label):
        if label is not None:
            label.requires_grad_(True)
    return [p for p in backbone.parameters() if p.requires_grad]


def check_trainable(trainable: object, layers: int | None = None) -> None:
    """``"all"``, ``"head"`` or a number of last layers (at most ``layers``, when known)."""
    count = isinstance(trainable, int) and not isinstance(trainable, bool)
    if trainable in ("all", "head") or (count and 0 <= trainable and (layers is None or trainable <= layers)):
        return
    bound = "" if layers is None else f" from 0 to {layers}"
    raise ValueError(f"trainable must be 'all', 'head' or a number of last layers{bound}, got {trainable!r}")


class TrainingStep:
    """Optimizer, schedule and the (optionally compiled, optionally distributed) loss of one run.

    ``__call__(windows)`` takes one step and returns the batch's mean loss (global across
    processes). A non-finite loss or gradient norm raises :class:`TrainingDiverged`
    before the weights change.
    """

    def __init__(
        self,
        loss: nn.Module,
        parameters: list[nn.Parameter],
        *,
        learning_rate: float,
        min_learning_rate: float,
        warmup_steps: int,
        stable_steps: int,
        decay_steps: int,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        max_grad_norm: float | None = 1.0,
        compile: bool = True,
    ):
        check_optimizer_options(weight_decay, max_grad_norm)
        for parameter in parameters:
            # Loading stores CPU weights column-major for inference; fused AdamW runs about 4x slower on those.
            parameter.data = parameter.data.contiguous()
        self.loss = loss
        self.parameters = parameters
        self.max_grad_norm = max_grad_norm
        self.distributed = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size() if self.distributed else 1
        train: nn.Module = loss
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [loss.backbone.device] if loss.backbone.device.type == "cuda" else None
            # Variate labels: the exogenous one is unused by batches without exogenous variates.
            has_labels = getattr(loss.backbone, "exogenous_variate_label", None) is not None
            train = DistributedDataParallel(loss, device_ids=device_ids, find_unused_parameters=has_labels)
        self._train: Callable[..., tuple[Tensor, Tensor]] = train
        self._evaluate: Callable[..., tuple[Tensor, Tensor]] = loss.evaluate
        if compile:
            self._train = torch.compile(train, fullgraph=not self.distributed, dynamic=False)
            self._evaluate = torch.compile(loss.evaluate, fullgraph=True, dynamic=False)
        self.optimizer = torch.optim.AdamW(
            parameters, lr=learning_rate, betas=betas, eps=ADAM_EPS, weight_decay=weight_decay,
            fused=_fused_ok(parameters),
        )  # fmt: skip
        factor = warmup_stable_decay(learning_rate, min_learning_rate, warmup_steps, stable_steps, decay_steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.steps_taken = 0

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def backward(self, windows: Windows) -> float:
        """Forward, loss and backward (gradients in ``.grad``, DDP-averaged); returns the global mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        total, count = self._train(*windows)
        global_total, global_count = self._all_reduce(total.detach(), count)
        mean = float(global_total / (global_count + EPS))
        if not math.isfinite(mean):
            raise TrainingDiverged(f"step {self.steps_taken + 1}: the training loss is {mean}")
        (total * self.world_size / (global_count + EPS)).backward()
        return mean

    def __call__(self, windows: Windows) -> float:
        mean = self.backward(windows)
        limit = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, limit))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"step {self.steps_taken + 1}: the gradient norm is {norm}")
        self.optimizer.step()
        self.schedule.step()
        self.steps_taken += 1
        return mean

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Windows]) -> float:
        """Mean loss over ``batches`` (summed, then divided once; global across processes)."""
        total = count = torch.zeros((), dtype=torch.float64)
        for windows in batches:
            batch_total, batch_count = self._evaluate(*windows)
            total = total + batch_total.double().cpu()
            count = count + batch_count.double().cpu()
        device = self.loss.backbone.device
        total, count = self._all_reduce(total.to(device), count.to(device))
        return float(total / (count + EPS))

    def _all_reduce(self, total: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
        """Global sum and count (float64: a float32 count is exact only up to 2**24 steps)."""
        if not self.distributed:
            return total, count.to(total.dtype)
        both = torch.stack((total.double(), count.double()))
        dist.all_reduce(both)
        return both[0].to(total.dtype), both[1]


def check_optimizer_options(weight_decay: float, max_grad_norm: float | None) -> None:
    if max_grad_norm is not None and not (is_real_number(max_grad_norm) and math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be a positive finite number or None, got {max_grad_norm!r}")
    if not (is_real_number(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")


def _fused_ok(parameters: list[nn.Parameter]) -> bool:
    """Fused AdamW where torch has it for every parameter (CPU and CUDA floating point)."""
    return bool(parameters) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)


def default_phases(num_steps: int, warmup_steps: int | None, decay_steps: int | None) -> tuple[int, int, int]:
    """(warmup, stable, decay) steps. Default: upstream's shape (200 warmup, then stable, then a
    decay as long as the stable phase) fitted to ``num_steps``: 10% warmup up to 200, the rest
    split evenly."""
    warmup = min(200, num_steps // 10) if warmup_steps is None else warmup_steps
    rest = max(0, num_steps - warmup)
    decay = rest // 2 if decay_steps is None else decay_steps
    return warmup, max(0, num_steps - warmup - decay), decay
