"""Training windows: fixed-length causal windows cut from series, as upstream's fine-tuning cuts them.

A window is ``context_length + patch_size`` steps: the model reads the first ``context_length``
and is scored on the same span one patch later. Training windows start uniformly anywhere they
fit; a validation window is each series' last, scored on its last ``prediction_length`` steps.
NaN is a missing value (masked out, filled with the last observed value); the last
``num_exogenous`` variates are read and never scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..data.util.dataset import fill_missing
from ..arguments import as_batch_variate_time, as_float_tensor, check_int, check_num_exogenous


class Windows(NamedTuple):
    """A batch of windows, ``window = context + patch`` steps long."""

    series: Float[Tensor, "batch variate window"]  # NaN filled
    observed: Bool[Tensor, "batch variate window"]  # the model's padding mask: False where NaN was
    loss_mask: Bool[Tensor, "batch variate context"]  # scored targets: steps patch..window of target variates

    def to(self, device: torch.device | str) -> "Windows":
        return Windows(*(t.to(device, non_blocking=True) for t in self))

    def split(self, parts: int, index: int) -> "Windows":
        """The ``index``-th of ``parts`` equal slices along the batch (one per process)."""
        if self.series.shape[0] % parts:
            raise ValueError(f"a batch of {self.series.shape[0]} windows does not split into {parts} equal parts")
        size = self.series.shape[0] // parts
        return Windows(*(t[index * size : (index + 1) * size] for t in self))


class TrainingSeries(list):
    """Validated series (float32 ``[variate, time]`` tensors, NaN = missing) and the label naming each in errors."""

    def __init__(self, series: Sequence[Tensor], labels: Sequence[str]):
        super().__init__(series)
        self.labels = list(labels)


def training_series(inputs: Any, *, num_exogenous: int = 0, name: str = "inputs") -> TrainingSeries:
    """``inputs`` as float32 ``[variate, time]`` tensors (NaN = missing).

    Accepted: a list of series, each 1-D (one variate) or 2-D ``(variate, time)``, of any
    lengths; a mapping of such series (its keys name them in errors); or one
    array/tensor, 1-D (one series), 2-D (a batch of univariate series) or 3-D
    ``(batch, variate, time)``. Every series needs the same number of variates.
    """
    if isinstance(inputs, (str, bytes)) or inputs is None:
        raise TypeError(f"{name} must be a list of series or an array, got {type(inputs).__name__}")
    if isinstance(inputs, Mapping):
        labels = [f"{name}[{key!r}]" for key in inputs]
        inputs = list(inputs.values())
    else:
        labels = None
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise ValueError(f"{name} is empty: give at least one series")
        labels = labels or [f"{name}[{i}]" for i in range(len(inputs))]
        series = [_as_variates_first(as_float_tensor(s, label), label) for s, label in zip(inputs, labels)]
    else:
        array = as_batch_variate_time(as_float_tensor(inputs, name), name)
        if array.shape[0] == 0:
            raise ValueError(f"{name} is empty: give at least one series")
        series = list(array.unbind(0))
        labels = [f"{name}[{i}]" for i in range(len(series))]
    variates = series[0].shape[0]
    for s, label in zip(series, labels):
        if s.shape[0] != variates:
            raise ValueError(f"{label} has {s.shape[0]} variates but {labels[0]} has {variates}; all must match")
        if torch.isinf(s).any():
            variate, step = torch.isinf(s).nonzero()[0].tolist()
            raise ValueError(f"{label} has ±inf at variate {variate}, step {step}; use NaN for a missing value")
    check_num_exogenous(num_exogenous, variates, name="num_exogenous")
    return TrainingSeries(series, labels)


def _labels(series: Sequence[Tensor], name: str) -> list[str]:
    """Each series' name in errors: its :class:`TrainingSeries` label, else ``name[i]``."""
    labels = getattr(series, "labels", None)
    return list(labels) if labels is not None else [f"{name}[{i}]" for i in range(len(series))]


class WindowSampler:
    """Windows of ``context_length + patch_size`` steps, drawn uniformly over all usable starts.

    A start is usable when its window has an observed target value both in what the model
    reads and in what it is scored on. A series shorter than ``min_length`` or without a
    usable window is a ``ValueError`` naming it.
    """

    def __init__(
        self,
        series: Sequence[Float[Tensor, "variate time"]],
        *,
        context_length: int,
        patch_size: int,
        num_exogenous: int = 0,
        min_length: int | None = None,
        name: str = "inputs",
    ):
        check_window(context_length, patch_size)
        self.series = list(series)
        self.context_length, self.patch_size, self.num_exogenous = context_length, patch_size, num_exogenous
        window = context_length + patch_size
        starts, owners = [], []
        for i, (s, label) in enumerate(zip(self.series, _labels(series, name))):
            check_length(s, max(window, min_length or 0), label)
            usable = usable_starts(s, context_length, patch_size, num_exogenous)
            if not usable.numel():
                raise ValueError(
                    f"{label}: every {window}-step window is all NaN in its context or in its scored "
                    f"part (last {context_length} steps); give it observed values or leave it out"
                )
            starts.append(usable)
            owners.append(torch.full_like(usable, i))
        self.starts, self.owners = torch.cat(starts), torch.cat(owners)

    def __len__(self) -> int:
        """How many distinct windows there are to draw from."""
        return self.starts.numel()

    def sample(self, batch_size: int, generator: torch.Generator) -> Windows:
        picks = torch.randint(len(self), (batch_size,), generator=generator)
        return self.windows(self.owners[picks].tolist(), self.starts[picks].tolist())

    def windows(self, owners: Sequence[int], starts: Sequence[int]) -> Windows:
        length = self.context_length + self.patch_size
        raw = torch.stack([self.series[i][:, s : s + length] for i, s in zip(owners, starts)])
        return make_windows(raw, self.patch_size, self.num_exogenous)


def last_windows(
    series: Sequence[Float[Tensor, "variate time"]],
    *,
    context_length: int,
    patch_size: int,
    prediction_length: int,
    num_exogenous: int = 0,
    name: str = "validation_inputs",
) -> Windows:
    """Each series' last window, scored on its last ``prediction_length`` steps only (upstream's validation)."""
    check_window(context_length, patch_size)
    check_int("prediction_length", prediction_length)
    length = context_length + patch_size
    labels = _labels(series, name)
    for s, label in zip(series, labels):
        check_length(s, max(length, context_length + prediction_length), label)
    raw = torch.stack([s[:, -length:] for s in series])
    windows = make_windows(raw, patch_size, num_exogenous)
    scored = torch.arange(context_length) >= context_length - min(prediction_length, context_length)
    loss_mask = windows.loss_mask & scored
    empty = ~loss_mask.flatten(1).any(1)
    if empty.any():
        i = int(empty.nonzero()[0])
        raise ValueError(f"{labels[i]}: its last {prediction_length} steps are all NaN, nothing to validate on")
    return windows._replace(loss_mask=loss_mask)


def make_windows(raw: Float[Tensor, "batch variate window"], patch_size: int, num_exogenous: int) -> Windows:
    """Fill NaN and build the masks of raw windows."""
    series, missing = fill_missing(raw)
    observed = ~missing
    target_variates = torch.arange(raw.shape[1]) < raw.shape[1] - num_exogenous
    loss_mask = observed[..., patch_size:] & target_variates[:, None]
    return Windows(series, observed, loss_mask)


def usable_starts(
    series: Float[Tensor, "variate time"], context_length: int, patch_size: int, num_exogenous: int
) -> Tensor:
    """Starts whose window has an observed target in its context and in its scored steps."""
    targets = series[: series.shape[0] - num_exogenous]
    seen = _prefix_counts((~torch.isnan(targets)).any(0))
    count = series.shape[1] - context_length - patch_size + 1
    start = torch.arange(count)
    in_context = seen[start + context_length] - seen[start]
    in_scored = seen[start + context_length + patch_size] - seen[start + patch_size]
    return start[(in_context > 0) & (in_scored > 0)]


def _prefix_counts(flags: Bool[Tensor, " time"]) -> Tensor:
    """Counts of True before each index, ``time + 1`` of them (prefix sums from 0)."""
    return torch.cat((torch.zeros(1, dtype=torch.long), flags.long().cumsum(0)))


def check_window(context_length: int, patch_size: int) -> None:
    check_int("context_length", context_length)
    if context_length < patch_size:
        raise ValueError(f"context_length {context_length} is shorter than one patch ({patch_size} steps)")
    if context_length % patch_size:
        raise ValueError(
            f"context_length {context_length} is not a multiple of the patch size {patch_size}; "
            f"use {context_length // patch_size * patch_size} or {(context_length // patch_size + 1) * patch_size}"
        )


def check_length(series: Tensor, needed: int, name: str) -> None:
    if series.shape[-1] < needed:
        raise ValueError(
            f"{name} has {series.shape[-1]} steps, fewer than {needed}: context_length plus the larger of "
            "prediction_length and one patch"
        )


def _as_variates_first(series: Tensor, name: str) -> Tensor:
    if series.ndim == 1:
        return series[None]
    if series.ndim == 2:
        return series
    raise ValueError(f"{name} must be 1-D (time) or 2-D (variate, time), got shape {tuple(series.shape)}")
