"""Forecasting many series: length-sorted batches, per-batch seeds or per-series random
streams, and the back-off on CUDA out-of-memory (fewer samples per batch, then fewer series
per batch, then fewer samples)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..arguments import check_int
from ..compile.diagnostics import snapshot
from ..data.util.dataset import first_observed_step
from ..families.base import ModelFamily
from ..inference.keyed_random import series_keys
from .forecasts import interpolate_knots
from .progress import batch_bar


@dataclass(frozen=True)
class BackOff:
    """How far a call backs off on CUDA out-of-memory before it gives up."""

    max_oom_retries: int = 2
    min_samples_per_batch: int = 32
    min_num_samples: int = 256

    def __post_init__(self) -> None:
        check_int("max_oom_retries", self.max_oom_retries, minimum=0)
        check_int("min_samples_per_batch", self.min_samples_per_batch)
        check_int("min_num_samples", self.min_num_samples)


@dataclass(frozen=True)
class SampleRequest:
    """One call's sampling: ``keys`` (one per series) select per-series random streams, else
    batch ``i`` is seeded ``seed + i``; ``batch_size=None`` forecasts all series at once."""

    prediction_length: int
    num_samples: int
    samples_per_batch: int
    batch_size: int | None = None
    seed: int | None = None
    keys: Tensor | None = None
    progress: Callable[[int, int], None] | None = None
    show_progress: bool | None = None


class BatchTooLarge(Exception):
    """Out of memory with ``samples_per_batch`` at its minimum and several series in the batch."""


def forecast_in_batches(
    family: ModelFamily,
    series: Tensor,
    observed: Tensor,
    future: Tensor | None,
    request: SampleRequest,
    back_off: BackOff,
    amp_dtype: torch.dtype | None,
    summarize: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """``(batch, variate, prediction_length, num_samples)`` samples on the CPU, or, with
    ``summarize``, what it makes of each batch's samples (so only one batch's samples are
    ever held at once); and what the call did (``last_run_metadata``)."""
    size = request.batch_size or series.shape[0]
    before = snapshot()
    splits = 0
    while True:
        batches = length_sorted_batches(observed, size, request.keys)
        try:
            parts, used = _forecast_batches(family, series, observed, future, batches, request, back_off, amp_dtype,
                                            summarize)  # fmt: skip
            break
        except BatchTooLarge:
            # Splitting costs speed only; cutting num_samples (the last resort) costs quality.
            if splits >= back_off.max_oom_retries:
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory at batch_size={size} after {splits} halvings (max_oom_retries)"
                ) from None
            splits += 1
            size = max(1, size // 2)
            warnings.warn(f"CUDA out of memory; retrying with batch_size={size}", RuntimeWarning, stacklevel=3)
    metadata = {
        "num_samples_requested": request.num_samples,
        "samples_per_batch_requested": request.samples_per_batch,
        "batch_size": len(batches[0]),
        "num_batches": len(batches),
        **used,
        "oom_retries": used["oom_retries"] + splits,
        "compile_stats": (snapshot() - before).as_dict(),
    }
    if summarize is None:
        # A back-off may have cut num_samples in some batches only: keep what all have.
        kept = min(part.shape[-1] for part in parts)
        parts = [part[..., :kept] for part in parts]
    result = torch.empty(series.shape[0], *parts[0].shape[1:], dtype=parts[0].dtype)
    for index, part in zip(batches, parts):
        result[index] = part.cpu()
    return result, metadata


def _forecast_batches(
    family: ModelFamily,
    series: Tensor,
    observed: Tensor,
    future: Tensor | None,
    batches: list[Tensor],
    request: SampleRequest,
    back_off: BackOff,
    amp_dtype: torch.dtype | None,
    summarize: Callable[[Tensor], Tensor] | None,
) -> tuple[list[Tensor], dict]:
    """Each batch of series; its samples (or their summary) and the merged metadata."""
    bar = batch_bar(len(batches), request.show_progress)
    parts, retries = [], 0
    try:
        for number, index in enumerate(batches):
            # Left on the CPU: the forecaster validates there (no device syncs) and moves it.
            chunk_series, chunk_observed = trim_to_longest(series[index], observed[index])
            samples, used = _forecast_with_back_off(
                family,
                chunk_series,
                chunk_observed,
                None if future is None else future[index],
                request,
                None if request.seed is None else request.seed + number,
                _batch_progress(request.progress, number, len(batches)),
                None if request.keys is None else request.keys[index],
                back_off,
                amp_dtype,
            )
            parts.append(samples if summarize is None else summarize(samples))
            retries += used["oom_retries"]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return parts, {**used, "oom_retries": retries}


def _forecast_with_back_off(
    family: ModelFamily,
    series: Tensor,
    observed: Tensor,
    future: Tensor | None,
    request: SampleRequest,
    seed: int | None,
    progress: Callable[[int, int], None] | None,
    keys: Tensor | None,
    back_off: BackOff,
    amp_dtype: torch.dtype | None,
) -> tuple[Tensor, dict]:
    """Forecast; on CUDA OOM halve ``samples_per_batch``, then ask for fewer series per batch
    (:class:`BatchTooLarge`), then halve ``num_samples``, down to the minimums."""
    num_samples, per_batch = request.num_samples, request.samples_per_batch
    retries = 0
    before = snapshot()
    while True:
        try:
            with _seeded(seed, family.device), _autocast(family.device, amp_dtype):
                samples = family.forecast(
                    series, observed, request.prediction_length, num_samples=num_samples,
                    samples_per_batch=min(per_batch, num_samples), future=future, sample_keys=keys, progress=progress,
                )  # fmt: skip
            break
        except torch.cuda.OutOfMemoryError:
            smaller_batch = max(back_off.min_samples_per_batch, per_batch // 2)
            if smaller_batch >= per_batch and series.shape[0] > 1:
                family.clear_buffers()
                raise BatchTooLarge from None
            fewer_samples = max(back_off.min_num_samples, num_samples // 2)
            if retries >= back_off.max_oom_retries or (smaller_batch >= per_batch and fewer_samples >= num_samples):
                raise
            retries += 1
            if smaller_batch < per_batch:
                per_batch = smaller_batch
            else:
                num_samples = fewer_samples
            warnings.warn(
                f"CUDA out of memory; retrying with num_samples={num_samples}, samples_per_batch={per_batch}",
                RuntimeWarning,
                stacklevel=3,
            )
            family.clear_buffers()  # pooled buffers of other shapes may be what filled memory
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    settings = family.compile_settings
    used = {
        "num_samples_used": num_samples,
        "samples_per_batch_used": family.last_samples_per_batch or min(per_batch, num_samples),
        "oom_retries": retries,
        "torch_dtype": str(family.dtype),
        "amp_dtype": None if amp_dtype is None else str(amp_dtype),
        "torch_compile_requested": settings.enabled,
        "torch_compile_success": family.compiled,
        "torch_compile_mode": settings.mode if settings.enabled else None,
        "torch_compile_error": family.compile_error,
        "compile_stats": (snapshot() - before).as_dict(),
        "device": str(family.device),
    }
    return samples, used


def quantile_summary(
    targets: int, levels: list[float], knots: Sequence[float] | None = None
) -> Callable[[Tensor], Tensor]:
    """Samples ``(batch, variate, H, S)`` -> ``(batch, targets, H, levels + 2)``: the quantiles, the median, the mean.

    With ``knots`` (a quantile model's levels), the last axis holds quantiles at the knots
    instead of samples: levels are interpolated between them, and the mean is the median."""

    def summarize(samples: Tensor) -> Tensor:
        values = samples[:, :targets].cpu().double().numpy()
        if knots is not None:
            quantiles = interpolate_knots(values, knots, [*levels, 0.5])
            return torch.from_numpy(np.concatenate([quantiles, quantiles[..., -1:]], axis=-1))
        quantiles = np.moveaxis(np.quantile(values, [*levels, 0.5], axis=-1), 0, -1)
        return torch.from_numpy(np.concatenate([quantiles, values.mean(axis=-1, keepdims=True)], axis=-1))

    return summarize


def length_sorted_batches(observed: Tensor, batch_size: int, keys: Tensor | None = None) -> list[Tensor]:
    """Indices of the series in batches of ``batch_size``, longest context first.

    A context starts at its first observed value in any variate; neighbours in length
    share a batch, so the left padding inside each batch stays small. Ties go by ``keys``
    when given (so the batches do not depend on the order of the input), else by position.
    """
    order = torch.arange(observed.shape[0]) if keys is None else torch.sort(keys, stable=True).indices
    starts = first_observed_step(observed)[order]
    order = order[torch.sort(starts, stable=True).indices]  # earliest start = longest first
    return list(order.split(batch_size))


def item_keys(seed: int, item_ids: Sequence[Any], last_timestamps: Sequence[Any]) -> Tensor:
    """Each item's random-stream key: from the seed, its id and its context's last timestamp
    (so the windows of a backtest, which share an id, draw from different streams).
    The Ray engine's planner keys items with it too, to order them as this process does."""
    return series_keys(seed, list(zip(item_ids, last_timestamps)))


def trim_to_longest(series: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the leading steps that no series of the batch observes."""
    start = int(first_observed_step(observed).min())
    return series[..., start:], observed[..., start:]


def _batch_progress(
    progress: Callable[[int, int], None] | None, number: int, count: int
) -> Callable[[int, int], None] | None:
    """``progress`` over all batches of series, from one batch's ``(done, total)``."""
    if progress is None:
        return None
    return lambda done, total: progress(number * total + done, count * total)


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's generators for one call without disturbing the caller's random state."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> Any:
    return nullcontext() if amp_dtype is None else torch.autocast(device.type, dtype=amp_dtype)
