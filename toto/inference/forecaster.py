"""Autoregressive forecasting: ``TotoForecaster.forecast`` and the ``Forecast`` it returns."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from ..compile.policy import CompiledFunction, CompileSettings
from ..compile.cache import CompileCache
from ..data.util.dataset import MaskedTimeseries, first_observed_step, padded_length
from ..compile.diagnostics import compiled_graph_count
from ..model.backbone import TotoBackbone, exogenous_variates
from ..arguments import check_int, check_representable
from .capacity import bucket_capacity, decode_capacity, pooled
from .inputs import as_masked, checked_keys, known_future, mask_missing
from .memory import fit_samples_per_batch, pooled_bytes
from .call_protocol import decode_by_calls
from .streaming import append_step, stream_prefill
from .decoding import (
    ContextBuffers,
    DecodeBuffers,
    begin,
    begin_mean,
    draw,
    keyed_begin,
    keyed_draw,
    keyed_sample_step,
    mean_step,
    prefill,
    prefixed_mean_step,
    sample_step,
)

@dataclass(frozen=True)
class Forecast:
    mean: Float[Tensor, "batch variate horizon"]
    samples: Float[Tensor, "batch variate horizon samples"] | None = None

    def quantile(self, q: float | Tensor) -> Tensor:
        """Linear-interpolated quantile(s) over samples; a tensor ``q`` adds a leading dimension."""
        samples = self._require_samples("quantile")
        q_t = torch.as_tensor(q, dtype=samples.dtype, device=samples.device)
        if not ((q_t >= 0) & (q_t <= 1)).all():  # also rejects NaN
            raise ValueError(f"q must lie in [0, 1], got {q}")
        ordered = samples.sort(dim=-1).values
        rank = q_t.reshape(-1) * (ordered.shape[-1] - 1)
        lower = rank.floor().long()
        upper = rank.ceil().long()
        frac = (rank - lower).to(samples.dtype)
        values = torch.lerp(ordered[..., lower], ordered[..., upper], frac)  # [..., len(q)]
        values = values.movedim(-1, 0)
        return values.reshape(*q_t.shape, *samples.shape[:-1])

    @property
    def median(self) -> Float[Tensor, "batch variate horizon"]:
        return self.quantile(0.5)

    @property
    def std(self) -> Float[Tensor, "batch variate horizon"]:
        return self._require_samples("std").std(dim=-1)

    def _require_samples(self, what: str) -> Tensor:
        if self.samples is None:
            raise ValueError(f"Forecast.{what} needs samples; forecast with num_samples set")
        return self.samples


class TotoForecaster:
    """Forecasts with a :class:`TotoBackbone`, one patch at a time.

    The context is encoded once per series. Every sample trajectory starts from
    its scaler state and reads its KV cache as a shared prefix, caching only the
    patches it decodes (upstream re-encodes the context for every sample batch;
    the outputs have the same distribution). Decode buffers are allocated per
    (rows, variates, capacity bucket, dtype, device) and reused across calls.

    ``torch_compile`` compiles the decode steps (``None``: read ``TOTO_COMPILE``);
    ``compile_mode``/``compile_backend`` as in ``torch.compile`` (``None``:
    ``TOTO_COMPILE_MODE``, else ``reduce-overhead`` on CUDA and ``default`` on CPU).
    ``compile_prefill`` also compiles the rest of the call: a static-shape prefill and
    the first-patch draw (``None``: on for CUDA, off for CPU). ``compile_cache_dir``
    keeps compiled artifacts across processes (``None``: ``TOTO_COMPILE_CACHE``, else none).

    A bfloat16 or float16 model takes and returns float32 data; the scaler's
    statistics are float64 whatever the model's dtype.
    """

    def __init__(
        self,
        model: TotoBackbone,
        *,
        torch_compile: bool | None = None,
        compile_mode: str | None = None,
        compile_backend: str | None = None,
        compile_prefill: bool | None = None,
        compile_cache_dir: str | os.PathLike | None = None,
    ):
        self.model = model
        self.model.eval()
        self.device, self._model_dtype = _device_and_dtype(model)
        # Our backbone takes the fast path; any other model is driven through upstream's call
        # protocol (toto.inference.stepwise). By type: a mock specced as TotoBackbone passes isinstance.
        self._native = issubclass(type(model), TotoBackbone)
        self.compile_settings = CompileSettings.resolve(
            torch_compile, compile_mode, compile_backend, self.device, compile_prefill
        )
        per_call = self.compile_settings.for_prefill()
        failures: set[str] = set()  # one compiler failure warns once for the whole forecaster
        # Static shapes: one graph per (rows, variates, capacity) or draw count, never a dynamic one.
        self._prefill = CompiledFunction(prefill, per_call, dynamic=False, failures=failures)
        self._begin = CompiledFunction(begin, per_call, dynamic=False, failures=failures)
        self._draw = CompiledFunction(draw, per_call, dynamic=False, failures=failures)
        self._keyed_begin = CompiledFunction(keyed_begin, per_call, dynamic=False, failures=failures)
        self._keyed_draw = CompiledFunction(keyed_draw, per_call, dynamic=False, failures=failures)
        self._steps = {
            True: CompiledFunction(sample_step, self.compile_settings, failures=failures),
            False: CompiledFunction(mean_step, self.compile_settings, failures=failures),
        }
        self._keyed_step = CompiledFunction(keyed_sample_step, self.compile_settings, failures=failures)
        self._begin_mean = CompiledFunction(begin_mean, per_call, dynamic=False, failures=failures)
        self._prefixed_mean_step = CompiledFunction(prefixed_mean_step, self.compile_settings, failures=failures)
        # Live streams (toto.inference.stream): their prefill, and one cached step per appended patch.
        self._stream_prefill = CompiledFunction(stream_prefill, per_call, dynamic=False, failures=failures)
        self._stream_step = CompiledFunction(append_step, self.compile_settings, failures=failures)
        self._compile_cache = CompileCache.resolve(compile_cache_dir) if self.compile_settings.enabled else None
        if self._compile_cache is not None:
            self._compile_cache.load()
        self._buffers: OrderedDict[tuple, DecodeBuffers] = OrderedDict()
        self._known_set: set[int] = set()  # ids of the context buffers whose known-future mask is set
        # Buffers and compiled graphs are shared by every call: one forecast at a time.
        self._lock = threading.RLock()
        # Sample rows per series the last call decoded at once (None: a mean path or a refused call);
        # less than asked where the memory guard shrank the batch to fit.
        self.last_samples_per_batch: int | None = None

    @property
    def patch_size(self) -> int:
        # Read when needed, not at init: upstream's tests build a forecaster on a bare mock.
        return self.model.patch_embed.stride

    @property
    def compiled(self) -> bool:
        """Whether decode steps currently run compiled (False after a compile failure)."""
        return all(step.active for step in self._steps.values())

    @property
    def compile_error(self) -> str | None:
        """Why compilation was abandoned, if it was."""
        return next((fn.error for fn in self._compiled_functions() if fn.error), None)

    def _compiled_functions(self) -> list[CompiledFunction]:
        return [
            self._prefill, self._begin, self._draw, self._keyed_begin, self._keyed_draw, *self._steps.values(),
            self._keyed_step, self._begin_mean, self._prefixed_mean_step, self._stream_prefill, self._stream_step,
        ]

    def capacity_for(self, context_length: int, prediction_length: int) -> int:
        """KV-cache capacity (patches) of a call: its buffers' and compiled graphs' bucket."""
        patch = self.patch_size
        return bucket_capacity(-(-context_length // patch) + -(-prediction_length // patch) - 1)

    def clear_buffers(self) -> None:
        """Free the decode buffers kept for reuse."""
        with self._lock:
            self._buffers.clear()

    @torch.no_grad()
    def forecast(
        self,
        inputs: MaskedTimeseries,
        prediction_length: int,
        num_samples: int | None = None,
        samples_per_batch: int = 10,
        use_kv_cache: bool = True,
        future_exogenous_variables: Float[Tensor, "batch exogenous horizon"] | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
        hide_leading_padding: bool = False,
        sample_keys: Int[Tensor, " batch"] | None = None,
    ) -> Forecast:
        """Forecast ``prediction_length`` steps: the mean path (``num_samples=None``) or sample paths.

        ``num_samples`` need not be a multiple of ``samples_per_batch``. The last
        ``inputs.num_exogenous_variables`` variates are exogenous: their known future,
        ``future_exogenous_variables`` (``[batch, exogenous, prediction_length]``, or without
        the batch dimension for unbatched inputs), replaces what the model decodes for them,
        and the forecast reports it for those variates, as upstream does. Without it they are
        decoded like the targets. ``progress(done, total)`` is called on the host after each
        decoded patch of each sample batch.

        ``hide_leading_padding``: whole patches before a series' first observed value (over
        its variates) are hidden from time attention, so a series left-padded to share a
        batch with longer ones is forecast as it would be alone. Upstream attends to them,
        so this is off by default; it needs ``use_kv_cache=True``.

        ``sample_keys``: one int64 key per series; each series' samples are then drawn from
        its own stream (:mod:`toto.inference.keyed_random`), so sample ``s`` of a series is
        the same whatever else shares the batch and whatever ``samples_per_batch`` is (up to
        the rounding of the batch's arithmetic). Needs ``use_kv_cache=True``.
        """
        check_int("prediction_length", prediction_length)
        check_int("samples_per_batch", samples_per_batch)
        if num_samples is not None:
            check_int("num_samples", num_samples)
        if hide_leading_padding and not (use_kv_cache and self._native):
            raise ValueError("hide_leading_padding needs use_kv_cache=True and a TotoBackbone")
        if sample_keys is not None and not (use_kv_cache and self._native):
            raise ValueError("sample_keys needs use_kv_cache=True and a TotoBackbone")
        args = (
            inputs, prediction_length, num_samples, samples_per_batch, use_kv_cache, future_exogenous_variables, progress,
            hide_leading_padding, sample_keys,
        )
        with self._lock:
            if self._compile_cache is None:
                return self._forecast(*args)
            graphs_before = compiled_graph_count()
            forecast = self._forecast(*args)
            if compiled_graph_count() != graphs_before:
                self._compile_cache.save()  # something new was compiled: keep it for the next process
            return forecast

    @torch.no_grad()
    def generate_mean(
        self,
        inputs: Float[Tensor, "batch variate time"],
        prediction_length: int,
        timestamp_seconds: Int[Tensor, "batch variate time"],
        time_interval_seconds: Int[Tensor, "batch variate"],
        input_padding_mask: Tensor | None = None,
        id_mask: Tensor | None = None,
        use_kv_cache: bool = False,
        future_exogenous_variables: Tensor | None = None,
        num_exogenous_variables: int = 0,
    ) -> Float[Tensor, "batch variate horizon"]:
        """Upstream's lower-level entry point: the mean path of ``inputs`` (``[batch, variate, time]``)."""
        masked = as_masked(inputs, timestamp_seconds, time_interval_seconds, input_padding_mask, id_mask, num_exogenous_variables)
        return self.forecast(
            masked, prediction_length, use_kv_cache=use_kv_cache, future_exogenous_variables=future_exogenous_variables
        ).mean

    @torch.no_grad()
    def generate_samples(
        self,
        inputs: Float[Tensor, "batch variate time"],
        prediction_length: int,
        num_samples: int,
        timestamp_seconds: Int[Tensor, "batch variate time"],
        time_interval_seconds: Int[Tensor, "batch variate"],
        input_padding_mask: Tensor | None = None,
        id_mask: Tensor | None = None,
        sampling_batch_size: int = 10,
        use_kv_cache: bool = False,
        future_exogenous_variables: Tensor | None = None,
        num_exogenous_variables: int = 0,
    ) -> Float[Tensor, "batch variate horizon samples"]:
        """Upstream's lower-level entry point: ``num_samples`` paths, ``sampling_batch_size`` at a time.

        Unlike upstream, ``num_samples`` need not be a multiple of ``sampling_batch_size``.
        """
        masked = as_masked(inputs, timestamp_seconds, time_interval_seconds, input_padding_mask, id_mask, num_exogenous_variables)
        return self.forecast(
            masked,
            prediction_length,
            num_samples=num_samples,
            samples_per_batch=sampling_batch_size,
            use_kv_cache=use_kv_cache,
            future_exogenous_variables=future_exogenous_variables,
        ).samples

    def _forecast(
        self,
        inputs: MaskedTimeseries,
        prediction_length: int,
        num_samples: int | None,
        samples_per_batch: int,
        use_kv_cache: bool,
        future_exogenous_variables: Tensor | None,
        progress: Callable[[int, int], None] | None,
        hide_leading_padding: bool = False,
        sample_keys: Tensor | None = None,
    ) -> Forecast:
        self.last_samples_per_batch = None
        series, observed, ids = self._prepare(inputs)
        keys = None if sample_keys is None else checked_keys(sample_keys, series.shape[0], series.device)
        patch = self.patch_size
        num_steps = -(-prediction_length // patch)
        future = known_future(
            future_exogenous_variables, inputs.num_exogenous_variables, series, num_steps * patch, prediction_length
        )
        batch, variates, length = series.shape
        num_context = -(-length // patch)  # patches, the first one left-padded
        if num_samples is not None:
            samples_per_batch = min(samples_per_batch, num_samples)
        if self._native:  # the estimate reads our backbone's config; a CPU has no OOM error to back off from
            samples_per_batch = fit_samples_per_batch(
                self.model,
                batch=batch,
                variates=variates,
                context_patches=num_context,
                prediction_length=prediction_length,
                num_samples=num_samples,
                samples_per_batch=samples_per_batch,
                dtype=self._data_dtype(),
                device=self.device,
                use_kv_cache=use_kv_cache,
                reusable_bytes=pooled_bytes(self._buffers.values()),
            )
        if num_samples is not None:
            self.last_samples_per_batch = samples_per_batch

        if not (use_kv_cache and self._native):
            series, observed, id_patches = self._stage(series, observed, ids, num_context)
            ids = id_patches.repeat_interleave(patch, dim=-1)
            chunks = [None] if num_samples is None else [
                min(samples_per_batch, num_samples - done) for done in range(0, num_samples, samples_per_batch)
            ]
            k = inputs.num_exogenous_variables
            paths = torch.cat(
                [
                    decode_by_calls(self.model, series, observed, ids, patch, num_steps, rows, future, k, use_kv_cache)
                    for rows in chunks
                ]
            )
        else:
            paths = self._decode(
                series, observed, ids, num_steps, num_samples, samples_per_batch, future, inputs.num_exogenous_variables,
                progress, hide_leading_padding, keys,
            )
        if num_samples is None:
            return Forecast(mean=paths[..., :prediction_length], samples=None)
        # Rows are laid out (sample, series); put samples last.
        samples = paths.unflatten(0, (-1, batch))[..., :prediction_length].permute(1, 2, 3, 0)
        return Forecast(mean=samples.mean(dim=-1), samples=samples)

    def _data_dtype(self) -> torch.dtype:
        """Inputs, scaler outputs and forecasts: the model's dtype, but at least float32."""
        dtype = self._model_dtype
        return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype

    def _prepare(self, inputs: MaskedTimeseries) -> tuple[Tensor, Tensor, Tensor]:
        """Validated ``(series, observed, ids)``, ``[batch, variate, time]``, NaN filled and masked, on the model's device."""
        series = torch.as_tensor(inputs.series)
        if series.ndim not in (2, 3):
            raise ValueError(f"inputs.series must be [variate, time] or [batch, variate, time], got shape {tuple(series.shape)}")
        unbatched = series.ndim == 2
        observed = torch.as_tensor(inputs.padding_mask)
        ids = torch.as_tensor(inputs.id_mask)
        if unbatched:
            series, observed, ids = series[None], observed[None], ids[None]
        if observed.shape != series.shape:
            raise ValueError(f"inputs.padding_mask has shape {tuple(observed.shape)}, expected {tuple(series.shape)}")
        series, observed = mask_missing(series, observed.to(torch.bool))
        dtype = self._data_dtype()
        check_representable(series, dtype, "inputs.series")
        series = series.to(device=self.device, dtype=dtype)
        return series, observed.to(device=series.device), ids.to(device=series.device).expand_as(series)

    def _stage(
        self, series: Tensor, observed: Tensor, ids: Tensor, num_patches: int
    ) -> tuple[Tensor, Tensor, Int[Tensor, "batch variate patches"]]:
        """Pad to ``num_patches`` whole patches: on the left to the patch size, the rest on the right.

        Left padding is upstream's (zeros, unobserved, the left-edge id); right padding is
        unobserved zeros that causal attention and the causal scaler never let a real patch
        see. Returns one id per patch.
        """
        patch = self.patch_size
        length = series.shape[-1]
        left = padded_length(length, patch) - length
        sides = (left, num_patches * patch - length - left)
        series, observed = F.pad(series, sides), F.pad(observed, sides)
        if left:
            ids = torch.cat((ids[..., :1].expand(*ids.shape[:-1], left), ids), dim=-1)
        per_patch = ids.unflatten(-1, (-1, patch))
        id_patches = per_patch.amin(-1)
        if (id_patches != per_patch.amax(-1)).any():
            raise ValueError("inputs.id_mask changes inside a patch; ids may only change at patch boundaries")
        return series, observed, F.pad(id_patches, (0, sides[1] // patch))

    def _decode(
        self,
        series: Tensor,
        observed: Tensor,
        ids: Tensor,
        num_steps: int,
        num_samples: int | None,
        per_batch: int,
        future: Tensor | None = None,
        num_exogenous: int = 0,
        progress: Callable[[int, int], None] | None = None,
        hide_leading_padding: bool = False,
        keys: Tensor | None = None,
    ) -> Float[Tensor, "rows variate steps_x_patch"]:
        """Prefill once, then decode the mean path or ``num_samples`` paths, ``per_batch`` at a time
        (from each series' stream when ``keys`` are given).

        Every batch has the same number of rows (the last one is trimmed), so one
        compiled graph serves them all.
        """
        batch, variates, length = series.shape
        num_context = -(-length // self.patch_size)
        capacity = self.capacity_for(length, num_steps * self.patch_size)
        self.model.refresh_fused_head()  # host-side, before any compiled step reads the folded head
        context = self._buffers_for(ContextBuffers, batch, variates, capacity)
        # Compiled, the context is padded to the whole capacity: one static shape per bucket.
        staged = self._stage(series, observed, ids, capacity if self._prefill.active else num_context)
        last = torch.tensor(num_context - 1, device=series.device)
        self._set_known_future(context, future, num_context)
        if keys is not None:
            context.keys.copy_(keys)
        labels = self.model.num_prepended_tokens
        context.state.cache.length = labels + num_context
        # Only variate labels read which variates are exogenous; without them, skip making the mask.
        exogenous = exogenous_variates(variates, num_exogenous, series.device) if labels else None
        # The staged patch grid starts at step 0, so a step's patch is its index // patch_size.
        first_real = first_observed_step(staged[1]) // self.patch_size if hide_leading_padding else None
        self._prefill(self.model, context, *staged, last, exogenous, first_real)
        return self.decode_context(context, num_context, num_steps, num_samples, per_batch, keys, progress)

    def decode_context(
        self,
        context: ContextBuffers,
        num_context: int,
        num_steps: int,
        num_samples: int | None,
        per_batch: int,
        keys: Tensor | None = None,
        progress: Callable[[int, int], None] | None = None,
        keep_context: bool = False,
    ) -> Float[Tensor, "rows variate steps_x_patch"]:
        """Decode ``num_steps`` patches after a prefilled ``context`` of ``num_context`` patches:
        the mean path, or ``num_samples`` paths ``per_batch`` at a time (see :meth:`_decode`).
        ``keep_context``: the mean path decodes in rows of its own, as sample paths do, so the
        context (a live stream's) is left as it was."""
        sample = num_samples is not None
        batch, variates = context.state.last_ids.shape
        labels = self.model.num_prepended_tokens
        if num_steps == 1:  # nothing to decode: every draw comes from the prefill's distribution
            if progress is not None:
                progress(1, 1)
            if not sample:
                return context.state.patch.clone()
            return (self._draw if keys is None else self._keyed_draw)(context, num_samples).clone()
        own_rows = sample or keep_context
        if own_rows:
            # Sample rows cache only what they decode; the context's cache is their shared prefix.
            repeats = min(per_batch, num_samples) if sample else 1
            buffers = self._buffers_for(DecodeBuffers, batch * repeats, variates, decode_capacity(num_steps - 1))
            step_args = (self.model, buffers, context)
        else:
            repeats = 1
            buffers = context.state
            step_args = (self.model, context)
        if sample:
            step = self._keyed_step if keys is not None else self._steps[True]
        else:
            step = self._prefixed_mean_step if keep_context else self._steps[False]
        begin = self._begin_mean if not sample else self._begin if keys is None else self._keyed_begin
        num_batches = 1 if num_samples is None else -(-num_samples // repeats)
        paths = []
        for batch_index in range(num_batches):
            if own_rows:
                if keys is not None:
                    buffers.first_sample.fill_(batch_index * repeats)
                begin(buffers, context)
            buffers.cache.length = 0 if own_rows else labels + num_context
            patches = [buffers.patch.clone()]
            for step_index in range(1, num_steps):
                buffers.cache.advance(1)
                step(*step_args)
                patches.append(buffers.patch.clone())
                if progress is not None:
                    progress(batch_index * (num_steps - 1) + step_index, num_batches * (num_steps - 1))
            paths.append(torch.cat(patches, dim=-1))
        return (torch.cat(paths) if len(paths) > 1 else paths[0])[: batch * (num_samples or 1)]

    def _set_known_future(self, context: ContextBuffers, future: Tensor | None, first: int) -> None:
        """Write the exogenous variates' known future at patch positions ``first`` on (host side, per call)."""
        values, known = context.future
        if future is None:
            if id(known) in self._known_set:  # only after a call with exogenous inputs: one op, not one per call
                known.fill_(False)
                self._known_set.discard(id(known))
            return
        count, patch = future.shape[1], self.patch_size
        steps = future.shape[-1] // patch
        values[:, -count:, first : first + steps].copy_(future.unflatten(-1, (steps, patch)))
        known.fill_(False)
        known[:, -count:] = True
        self._known_set.add(id(known))

    def _buffers_for(self, kind: type, rows: int, variates: int, capacity: int) -> ContextBuffers | DecodeBuffers:
        key = (kind, rows, variates, capacity, self._data_dtype(), self.device)
        return pooled(self._buffers, key, lambda: kind.allocate(self.model, rows, variates, capacity, *key[-2:]))


def _device_and_dtype(model: TotoBackbone) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's first parameter or buffer (CPU/float32 if it has none).

    Read from the tensors, not from attributes, so that a duck-typed backbone (a mock, a wrapper) works.
    """
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    return device, dtype
