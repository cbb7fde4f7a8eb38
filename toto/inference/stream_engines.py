"""What each model family does for a live stream (:class:`~toto.inference.stream.LiveStream`):
encode a window whole, run one cached step per completed patch, score a patch against the
prediction made before it, and forecast from the cached state without changing it.

- :class:`Toto1Engine`: the compiled stream functions of :mod:`toto.inference.streaming`,
  and the forecaster's decode steps over the stream's cache as a shared prefix.
- :class:`Toto2Engine`: Toto 2.0's block decoding over static buffers that grow by a slot
  per patch. Its xPos centre is per call, so every call of a stream's forecast is shifted by
  the same amount; upstream reads the context's last patch as observed, so each append
  re-encodes the previous last patch with its true mask together with the new one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor

from ..arguments import check_int
from ..compile.policy import CompiledFunction
from ..data.util.dataset import fill_missing, first_observed_step
from ..model.distribution import MixtureOfStudentT
from ..toto2.config import QUANTILE_LEVELS
from ..toto2.decoding import encode_slots
from .forecaster import Forecast, TotoForecaster
from .likelihood import StepPredictions, StepScores
from .quantile_scores import QuantileStepPredictions
from .streaming import StreamBuffers
from .toto2_forecaster import BlockPlan, Toto2Forecaster, allocate, check_block_size, fill_context


class StreamEngine:
    """What every family's engine shares: its forecaster, model and patch size, and the
    pipeline's autocast (``amp_dtype``: the same arithmetic as its predict)."""

    def __init__(self, forecaster: Any, autocast_dtype: torch.dtype | None):
        self.forecaster = forecaster
        self.autocast_dtype = autocast_dtype

    @property
    def model(self) -> torch.nn.Module:
        return self.forecaster.model

    @property
    def patch_size(self) -> int:
        return self.forecaster.patch_size

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None)


class Toto1Engine(StreamEngine):
    """Toto 1.0's side of a stream: its buffers, cached steps and forecasts."""

    def __init__(self, forecaster: TotoForecaster, autocast_dtype: torch.dtype | None = None):
        super().__init__(forecaster, autocast_dtype)
        self.buffers: StreamBuffers | None = None

    @property
    def device(self) -> torch.device:
        return self.forecaster.device

    def allocate(self, batch: int, variates: int, capacity: int, device: Any = None) -> list[Tensor]:
        """The stream's buffers (``device="meta"``: only measured); returns their tensors."""
        forecaster = self.forecaster
        buffers = StreamBuffers.allocate(forecaster.model, batch, variates, capacity, forecaster._data_dtype(),
                                         device or forecaster.device)  # fmt: skip
        if device is None:
            self.buffers = buffers
        return buffers.tensors()

    def tensors(self) -> list[Tensor]:
        return self.buffers.tensors()

    def cache_tensors(self) -> list[Tensor]:
        return self.buffers.context.state.cache.tensors()

    def set_patches(self, patches: int) -> None:
        """The host's count of cached patches (after a restore)."""
        self.buffers.context.state.cache.length = self.model.num_prepended_tokens + patches

    def options(self) -> dict[str, Any]:
        return {"family": "Toto 1.0"}

    def step_snapshot(self, patches: int) -> list[Tensor]:
        return []  # a step writes only the slot after the context

    def restore_step(self, saved: list[Tensor], patches: int) -> None:
        pass

    @contextmanager
    def running(self) -> Iterator[None]:
        """The forecaster's buffers and graphs to ourselves, under the pipeline's autocast."""
        with self.forecaster._lock, self.autocast():
            self.forecaster.model.refresh_fused_head()
            yield

    def encode(self, window: Tensor, capacity: int) -> int:
        """Encode ``window`` (CPU, NaN missing) whole on its own grid; returns its patches."""
        forecaster, patch = self.forecaster, self.patch_size
        series, missing = fill_missing(window)
        patches = -(-window.shape[-1] // patch)
        device = self.device
        series, observed = series.to(device=device, dtype=forecaster._data_dtype()), (~missing).to(device)
        # Staged as the forecaster stages a context; compiled, padded to the whole capacity (one static shape).
        staged = forecaster._stage(series, observed, torch.zeros_like(series, dtype=torch.long),
                                   capacity if forecaster._stream_prefill.active else patches)  # fmt: skip
        first_real = first_observed_step(staged[1]) // patch
        last = torch.tensor(patches - 1, device=device)
        self.set_patches(patches)
        forecaster._stream_prefill(forecaster.model, self.buffers, *staged, last, first_real)
        return patches

    def step(self, chunk: Tensor, patches: int) -> bool:
        """One cached step for a completed patch (CPU, NaN missing) after ``patches`` cached ones;
        False where the clamp moved (then the host re-encodes)."""
        observed = ~torch.isnan(chunk)
        values = torch.nan_to_num(chunk).to(device=self.device, dtype=self.forecaster._data_dtype())
        self.buffers.context.state.cache.advance(1)
        self.forecaster._stream_step(self.model, self.buffers, values, observed.to(self.device))
        return bool(self.buffers.exact.all())

    def head_scores(self, chunk: Tensor, skip: int) -> StepScores:
        """Scores of ``chunk[..., skip:]`` (steps of the next patch) under the current head."""
        head = self.buffers.context.head
        steps = chunk.shape[-1]
        values = chunk[..., skip:].to(head.affine_loc.device)
        mixture = MixtureOfStudentT(*(t[..., skip:steps, :] for t in head[:4]))
        predictions = StepPredictions(mixture, head.affine_loc.float().expand_as(values),
                                      head.affine_scale.float().expand_as(values), torch.nan_to_num(values),
                                      ~torch.isnan(values))  # fmt: skip
        return StepScores(predictions.nll().cpu(), predictions.tail_probability().cpu())

    def forecast(
        self, patches: int, prediction_length: int, num_samples: int | None, samples_per_batch: int, seed: int | None
    ) -> Forecast:
        num_steps = -(-prediction_length // self.patch_size)
        batch = self.buffers.exact.shape[0]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            paths = self.forecaster.decode_context(
                self.buffers.context, patches, num_steps, num_samples, samples_per_batch, keep_context=True
            )
        if num_samples is None:
            return Forecast(mean=paths[..., :prediction_length].float().cpu())
        samples = paths.unflatten(0, (-1, batch))[..., :prediction_length].permute(1, 2, 3, 0).float().cpu()
        return Forecast(mean=samples.mean(dim=-1), samples=samples)


class StreamQuantiles:
    """A quantile model's stream forecast: ``quantiles`` ``[batch, variate, horizon, knot]`` at
    ``levels``; :attr:`mean` is the median (the model's point forecast), as in
    :class:`~toto.pipeline.QuantileForecast`; there are no samples."""

    samples = None

    def __init__(self, quantiles: Tensor, levels: tuple[float, ...]):
        self.quantiles, self.levels = quantiles, levels

    @property
    def mean(self) -> Tensor:
        return self.quantiles[..., self.levels.index(0.5)]


class Toto2Engine(StreamEngine):
    """Toto 2.0's side of a stream: block buffers whose context grows by a slot per patch.

    The context sits in slots ``0 .. patches - 1`` (positions equal slots); slots after it hold
    a forecast's blocks while it runs and are cleared after. Every key is written with xPos
    centre 0; a forecast shifts each of its calls' centres by the first call's centre.
    """

    def __init__(
        self, forecaster: Toto2Forecaster, decode_block_size: int | None, max_horizon: int,
        autocast_dtype: torch.dtype | None = None,
    ):  # fmt: skip
        check_block_size(decode_block_size, forecaster.patch_size)
        check_int("max_horizon", max_horizon)
        super().__init__(forecaster, autocast_dtype)
        self.decode_block_size, self.max_horizon = decode_block_size, max_horizon
        self.buffers: Any = None
        self.head: Tensor | None = None  # knots [batch, variate, patch, knot] of the patch after the context
        self.last_mask: Tensor | None = None  # the true mask of the context's last patch (read as observed)
        self._encode_slots = CompiledFunction(encode_slots, forecaster.compile_settings, dynamic=False)

    @property
    def device(self) -> torch.device:
        return self.forecaster.model.device

    def forecast_slots(self, capacity: int) -> int:
        plan = BlockPlan.of(capacity * self.patch_size, self.max_horizon, self._block_patches(), self.patch_size)
        return plan.slots - plan.context_slots

    def _block_patches(self) -> int:
        return check_block_size(self.decode_block_size, self.patch_size)

    def allocate(self, batch: int, variates: int, capacity: int, device: Any = None) -> list[Tensor]:
        slots = capacity + self.forecast_slots(capacity)
        dtype = next(self.model.parameters()).dtype
        buffers = allocate(self.model, batch, variates, slots, dtype, device or self.device)
        head = torch.zeros(batch, variates, self.patch_size, len(QUANTILE_LEVELS), device=device or self.device)
        last_mask = torch.zeros(batch, variates, self.patch_size, dtype=torch.bool, device=device or self.device)
        if device is None:
            self.buffers, self.head, self.last_mask = buffers, head, last_mask
        return [*buffers.tensors(), head, last_mask]

    def tensors(self) -> list[Tensor]:
        return [*self.buffers.tensors(), self.head, self.last_mask]

    def cache_tensors(self) -> list[Tensor]:
        return self.buffers.cache_tensors()

    def set_patches(self, patches: int) -> None:
        pass  # positions live in the host's count; the buffers keep none

    def options(self) -> dict[str, Any]:
        return {"family": "Toto 2.0", "decode_block_size": self.decode_block_size, "max_horizon": self.max_horizon}

    def step_snapshot(self, patches: int) -> list[Tensor]:
        """The keys and values of the context's last slot, which the next step rewrites."""
        return [t[:, :, patches - 1].clone() for t in self.cache_tensors()]

    def restore_step(self, saved: list[Tensor], patches: int) -> None:
        for target, kept in zip(self.cache_tensors(), saved):
            target[:, :, patches - 1] = kept

    @contextmanager
    def running(self) -> Iterator[None]:
        with self.autocast():
            yield

    def encode(self, window: Tensor, capacity: int) -> int:
        patches = -(-window.shape[-1] // self.patch_size)
        series, missing = fill_missing(window)
        true_mask = fill_context(self.buffers, series.to(self.device), (~missing).to(self.device), patches,
                                 self.patch_size)  # fmt: skip
        self.last_mask.copy_(true_mask)
        tokens = capacity if self._encode_slots.active else patches  # static when compiled
        self.head.copy_(self._call_encode(0, tokens, patches - 1))
        return patches

    def step(self, chunk: Tensor, patches: int) -> bool:
        """Append a completed patch at slot ``patches``; re-encode the previous last patch with its
        true mask beside it (it is no longer read as observed). Always exact."""
        patch, buffers = self.patch_size, self.buffers
        steps = slice(patches * patch, (patches + 1) * patch)
        observed = ~torch.isnan(chunk).to(self.device)
        before = buffers.values[..., patches * patch - 1 : patches * patch]
        values, _ = fill_missing(torch.cat((before, chunk.to(self.device)), dim=-1))  # carried across patches
        buffers.values[..., steps] = values[..., 1:]
        previous = slice((patches - 1) * patch, patches * patch)
        buffers.observed[..., previous] = self.last_mask
        buffers.groups[..., patches - 1] = torch.where(self.last_mask.any(-1), 0, -1)
        self.last_mask.copy_(observed)
        buffers.observed[..., steps] = True
        buffers.groups[..., patches] = 0
        self.head.copy_(self._call_encode(patches - 1, 2, patches))
        return True

    def _call_encode(self, start: int, tokens: int, last: int) -> Tensor:
        device = self.device
        zero = torch.zeros((), dtype=torch.long, device=device)
        return self._encode_slots(self.model, self.buffers, torch.tensor(start, device=device), zero, zero, tokens,
                                  torch.tensor(last, device=device))  # fmt: skip

    def head_scores(self, chunk: Tensor, skip: int) -> StepScores:
        values = chunk[..., skip:].to(self.device)
        knots = self.head[..., skip : chunk.shape[-1], :]
        predictions = QuantileStepPredictions(knots, QUANTILE_LEVELS, torch.nan_to_num(values), ~torch.isnan(values))
        return StepScores(predictions.nll().cpu(), predictions.tail_probability().float().cpu())

    def forecast(
        self, patches: int, prediction_length: int, num_samples: int | None, samples_per_batch: int, seed: int | None
    ) -> StreamQuantiles:
        if num_samples is not None or seed is not None:
            raise ValueError("num_samples, seed: Toto 2.0 forecasts quantiles; it draws no samples")
        patch, buffers = self.patch_size, self.buffers
        plan = BlockPlan.of(patches * patch, prediction_length, self._block_patches(), patch)
        used = patches + plan.slots - plan.context_slots
        if used > buffers.groups.shape[-1]:
            raise ValueError(f"prediction_length {prediction_length}: beyond this stream's max_horizon "
                             f"{self.max_horizon} (open the stream with a larger one)")  # fmt: skip
        device = self.device
        zero = torch.zeros((), dtype=torch.long, device=device)
        calls = list(plan.calls(patches, first_start=patches - 1))  # only the last context patch is re-read
        first_center = calls[0][3]  # the keys were written at centre 0: shift every call by the first's
        blocks = []
        try:
            for start, tokens, decoded, center in calls:
                quantiles = self.forecaster._block(
                    self.model, buffers, torch.tensor(start, device=device), zero,
                    torch.tensor(center - first_center, device=device), tokens, plan.block,
                )  # fmt: skip
                blocks.append(quantiles[..., :decoded, :].flatten(-2))
        finally:  # the forecast's slots go back to empty: the stream is as it was
            buffers.values[..., patches * patch :] = 0.0
            buffers.observed[..., patches * patch :] = False
            buffers.groups[..., patches:] = 0
        quantiles = torch.cat(blocks, -1)[..., :prediction_length]  # [quantile, batch, variate, horizon]
        return StreamQuantiles(quantiles.permute(1, 2, 3, 0).float().cpu(), QUANTILE_LEVELS)
