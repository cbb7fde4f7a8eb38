"""``TotoStream``: a live context whose KV cache and scaler state persist between calls.

Host bookkeeping only (Python ints, the raw window on the CPU); the tensor work is in
:mod:`toto.inference.streaming`, compiled like the forecaster's steps.

The cache holds whole patches on a grid set when the context was last encoded: a context
of ``n`` steps is left-padded to whole patches, as a fresh call pads it. Appended steps
complete the patch after the cached ones; each completed patch is one cached step. Steps
that do not complete a patch wait (``pending``); a forecast with steps pending re-encodes
the window, because a fresh call on that length puts the patch boundaries elsewhere, and
the new grid then holds for the appends that follow.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.util.dataset import fill_missing, first_observed_step, padded_length
from .capacity import bucket_capacity
from ..model.distribution import MixtureOfStudentT
from .forecaster import Forecast
from .likelihood import StepPredictions, StepScores
from .memory import available_bytes, format_bytes
from .streaming import StreamBuffers

if TYPE_CHECKING:
    from .forecaster import TotoForecaster

STATE_FORMAT = "toto-stream/1"


class StreamError(ValueError):
    """A stream refused a call; the stream is unchanged."""


class TotoStream:
    """Series (``[batch, variate, time]``, NaN missing) whose forecasts reuse their encoded past.

    :meth:`append` takes new steps, :meth:`forecast` equals a fresh forecast of :attr:`context`
    (the window the stream holds: at most ``max_context`` steps; when an append would pass
    it, the window is cut to its last ``keep`` steps and re-encoded once).
    """

    def __init__(
        self, forecaster: "TotoForecaster", series: Tensor, *, max_context: int, keep: int, version: str,
        autocast_dtype: torch.dtype | None = None,
    ):  # fmt: skip
        patch = forecaster.patch_size
        if not 0 < keep <= max_context:
            raise ValueError(f"keep must be in [1, max_context={max_context}], got {keep}")
        self._forecaster = forecaster
        self.max_context, self.keep, self.version = max_context, keep, version
        self.autocast_dtype = autocast_dtype  # the pipeline's amp_dtype: the same arithmetic as its predict
        self.capacity = bucket_capacity(-(-max_context // patch) + 1)  # + 1: a left-padded first patch
        batch, variates, _ = series.shape
        model = forecaster.model
        check_stream_memory(forecaster, batch, variates, self.capacity)
        self._buffers = StreamBuffers.allocate(model, batch, variates, self.capacity, forecaster._data_dtype(), forecaster.device)
        self._window = series[..., -max_context:].float().cpu().clone()
        self._cached_steps = 0  # steps of the window that the cache holds (the rest are pending)
        self._patches = 0  # patches in the cache (host mirror of the position tensor)
        self.closed = False
        self.reencodes = 0  # how often the window was encoded whole (first prefill included)
        self._snapshot: dict[str, Any] | None = None  # during an append: what a failure restores
        self._encode(self._window)

    # ------------------------------------------------------------------ public

    @property
    def batch(self) -> int:
        return self._window.shape[0]

    @property
    def variates(self) -> int:
        return self._window.shape[1]

    @property
    def context(self) -> Tensor:
        """The window a fresh call would forecast from to match: ``[batch, variate, time]`` (NaN missing)."""
        return self._window.clone()

    @property
    def pending(self) -> int:
        """Appended steps not yet in a whole cached patch."""
        return self._window.shape[-1] - self._cached_steps

    @torch.no_grad()
    def append(self, values: Any, score: bool = False) -> StepScores | None:
        """Append ``values`` (``[batch, variate, steps]``; ``[variate, steps]`` or ``[steps]`` for
        one series) after the context. NaN is missing. Each completed patch runs one cached step;
        on any error the stream is left as it was.

        ``score``: return :class:`~toto.inference.likelihood.StepScores` of the new steps under
        the prediction made before they arrived (the patch they fall in, from the patches
        before it). If the append passes ``max_context``, the window is first cut to its last
        ``keep`` steps less the new ones, and they are scored against that window's prediction.
        """
        self._check_open()
        new = self._checked_values(values)
        patch = self._forecaster.patch_size
        snapshot = self._snapshot = self._take_snapshot()
        try:
            if self._window.shape[-1] + new.shape[-1] > self.max_context:
                self._encode(self._window[..., -max(self.keep - new.shape[-1], patch) :])
            first_new = self._window.shape[-1]
            self._window = torch.cat((self._window, new), dim=-1)
            scores = self._append_patches(first_new if score else None)
            if self._window.shape[-1] > self.max_context:  # more new steps than the window holds
                self._encode(self._window[..., -self.keep :])
            return scores
        except BaseException:
            self._restore(snapshot)
            raise
        finally:
            self._snapshot = None

    @torch.no_grad()
    def forecast(
        self, prediction_length: int, num_samples: int | None = None, samples_per_batch: int = 256, seed: int | None = None
    ) -> Forecast:
        """What a fresh ``forecast`` of :attr:`context` gives: the mean path (``num_samples=None``)
        or sample paths (``samples`` ``[batch, variate, prediction_length, num_samples]``)."""
        self._check_open()
        for name, value in (("prediction_length", prediction_length), ("samples_per_batch", samples_per_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.pending:
            self._encode(self._window)  # the grid a fresh call on this length uses
        patch = self._forecaster.patch_size
        num_steps = -(-prediction_length // patch)
        with torch.random.fork_rng(devices=[self._forecaster.device] if self._forecaster.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            with self._running():
                paths = self._forecaster.decode_context(
                    self._buffers.context, self._patches, num_steps, num_samples, samples_per_batch, keep_context=True
                )
        if num_samples is None:
            return Forecast(mean=paths[..., :prediction_length].float().cpu())
        samples = paths.unflatten(0, (-1, self.batch))[..., :prediction_length].permute(1, 2, 3, 0).float().cpu()
        return Forecast(mean=samples.mean(dim=-1), samples=samples)

    def close(self) -> None:
        """Free the stream's buffers; later calls raise."""
        self.closed = True
        self._buffers = None  # type: ignore[assignment]

    def nbytes(self) -> int:
        """Bytes the stream holds on its device (KV cache and state) plus its window on the CPU."""
        self._check_open()
        return sum(t.numel() * t.element_size() for t in self._buffers.tensors()) + self._window.numel() * 4

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`from_state` needs to resume with identical forecasts (CPU tensors)."""
        self._check_open()
        return {
            "format": STATE_FORMAT,
            "version": self.version,
            "model": model_fingerprint(self._forecaster.model),
            "max_context": self.max_context,
            "keep": self.keep,
            "window": self._window.clone(),
            "cached_steps": self._cached_steps,
            "patches": self._patches,
            "reencodes": self.reencodes,
            "buffers": [t.detach().cpu().clone() for t in self._buffers.tensors()],
        }

    @classmethod
    def from_state(
        cls, forecaster: "TotoForecaster", state: dict[str, Any], version: str, autocast_dtype: torch.dtype | None = None
    ) -> "TotoStream":
        """A stream resumed from :meth:`state_dict` on ``forecaster``'s model; another model's or
        another version's state is refused, naming both."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise StreamError(f"not a stream state (expected format {STATE_FORMAT!r})")
        if state["version"] != version:
            raise StreamError(f"stream state from toto-compiled {state['version']}; this is toto-compiled {version}")
        ours = model_fingerprint(forecaster.model)
        if state["model"] != ours:
            raise StreamError(f"stream state from model {state['model']}; this pipeline's model is {ours}")
        stream = cls.__new__(cls)
        stream._forecaster = forecaster
        stream.max_context, stream.keep, stream.version = state["max_context"], state["keep"], version
        stream.autocast_dtype = autocast_dtype
        patch = forecaster.patch_size
        stream.capacity = bucket_capacity(-(-stream.max_context // patch) + 1)
        window = state["window"]
        stream._buffers = StreamBuffers.allocate(forecaster.model, window.shape[0], window.shape[1], stream.capacity,
                                                 forecaster._data_dtype(), forecaster.device)  # fmt: skip
        targets = stream._buffers.tensors()
        if len(targets) != len(state["buffers"]) or any(t.shape != s.shape for t, s in zip(targets, state["buffers"])):
            raise StreamError("stream state does not match this model's buffers")
        for target, saved in zip(targets, state["buffers"]):
            target.copy_(saved)
        stream._window = window.clone()
        stream._cached_steps, stream._patches = state["cached_steps"], state["patches"]
        stream._buffers.context.state.cache.length = forecaster.model.num_prepended_tokens + stream._patches
        stream.closed, stream.reencodes, stream._snapshot = False, state["reencodes"], None
        return stream

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _running(self) -> Iterator[None]:
        """The forecaster's buffers and graphs to ourselves, under the pipeline's autocast."""
        device = self._forecaster.device
        with self._forecaster._lock, torch.autocast(device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
            yield

    def _check_open(self) -> None:
        if self.closed:
            raise StreamError("this stream is closed")

    def _checked_values(self, values: Any) -> Tensor:
        new = torch.as_tensor(values, dtype=torch.float32).detach().cpu()
        if new.ndim == 1 and self.batch == 1 and self.variates == 1:
            new = new[None, None]
        elif new.ndim == 2 and self.batch == 1:
            new = new[None]
        if new.ndim != 3 or new.shape[:2] != (self.batch, self.variates):
            raise StreamError(
                f"values: expected [batch={self.batch}, variate={self.variates}, steps], got shape {tuple(new.shape)}"
            )
        if torch.isinf(new).any():
            raise StreamError("values: ±inf is not a value; use NaN for a missing one")
        return new

    def _append_patches(self, first_new: int | None) -> StepScores | None:
        """One cached step per whole patch now available; re-encode if the clamp moved. With
        ``first_new`` (the window index of the first new step), the new steps' scores."""
        patch = self._forecaster.patch_size
        forecaster, stream = self._forecaster, self._buffers
        scores: list[StepScores] = []
        exact = True
        with self._running():
            forecaster.model.refresh_fused_head()
            while True:
                chunk = self._window[..., self._cached_steps : self._cached_steps + patch]
                if first_new is not None:
                    scores.append(self._head_scores(chunk, max(0, first_new - self._cached_steps)))
                if chunk.shape[-1] < patch:
                    break
                observed = ~torch.isnan(chunk)
                values = torch.nan_to_num(chunk).to(device=forecaster.device, dtype=forecaster._data_dtype())
                stream.context.state.cache.advance(1)
                forecaster._stream_step(forecaster.model, stream, values, observed.to(forecaster.device))
                self._cached_steps += patch
                self._patches += 1
                exact = exact and bool(stream.exact.all())
        if not exact:  # an earlier patch's clamp moved: encode the cached part afresh
            self._encode(self._window[..., : self._cached_steps], keep_window=True)
        if first_new is None:
            return None
        return StepScores(*(torch.cat(parts, dim=-1) for parts in zip(*scores)))

    def _head_scores(self, chunk: Tensor, skip: int) -> StepScores:
        """Scores of ``chunk[..., skip:]`` (steps of the next patch) under the current head."""
        head = self._buffers.context.head
        steps = chunk.shape[-1]
        values = chunk[..., skip:].to(head.affine_loc.device)
        mixture = MixtureOfStudentT(*(t[..., skip:steps, :] for t in head[:4]))
        predictions = StepPredictions(mixture, head.affine_loc.float().expand_as(values),
                                      head.affine_scale.float().expand_as(values), torch.nan_to_num(values),
                                      ~torch.isnan(values))  # fmt: skip
        return StepScores(-predictions.log_density().cpu(), predictions.tail_probability().cpu())

    @torch.no_grad()
    def _encode(self, window: Tensor, keep_window: bool = False) -> None:
        """Encode ``window`` whole on its own grid; the stream's window becomes it (unless ``keep_window``)."""
        forecaster = self._forecaster
        patch = forecaster.patch_size
        series, missing = fill_missing(window)
        if (~(~missing).any(-1)).any():
            raise StreamError("every series needs an observed value in the window")
        if self._snapshot is not None and "cache" not in self._snapshot:  # an append in progress
            self._snapshot["cache"] = [t.clone() for t in self._buffers.context.state.cache.tensors()]
        num_patches = -(-window.shape[-1] // patch)
        left = padded_length(window.shape[-1], patch) - window.shape[-1]
        # Compiled, the window is padded to the whole capacity: one static shape (as the forecaster does).
        total = (self.capacity if forecaster._stream_prefill.active else num_patches) * patch
        device, dtype = forecaster.device, forecaster._data_dtype()
        staged = F.pad(series, (left, total - left - window.shape[-1])).to(device=device, dtype=dtype)
        observed = F.pad(~missing, (left, total - left - window.shape[-1])).to(device)
        ids = torch.zeros(window.shape[0], window.shape[1], total // patch, dtype=torch.long, device=device)
        first_real = first_observed_step(observed) // patch
        last = torch.tensor(num_patches - 1, device=device)
        with self._running():
            forecaster.model.refresh_fused_head()
            self._buffers.context.state.cache.length = forecaster.model.num_prepended_tokens + num_patches
            forecaster._stream_prefill(forecaster.model, self._buffers, staged, observed, ids, last, first_real)
        if not keep_window:
            self._window = window.clone()
        self._cached_steps = window.shape[-1]
        self._patches = num_patches
        self.reencodes += 1

    def _take_snapshot(self) -> dict[str, Any]:
        """The state an append may change, but for the KV cache: a cached step writes only slots
        past the context, which nothing reads; an encode saves the cache first (:meth:`_encode`)."""
        cache = {id(t) for t in self._buffers.context.state.cache.tensors()}
        return {
            "tensors": [None if id(t) in cache else t.clone() for t in self._buffers.tensors()],
            "host": (self._window, self._cached_steps, self._patches, self.reencodes,
                     self._buffers.context.state.cache.length),  # fmt: skip
        }

    def _restore(self, snapshot: dict[str, Any]) -> None:
        for target, saved in zip(self._buffers.tensors(), snapshot["tensors"]):
            if saved is not None:
                target.copy_(saved)
        for target, saved in zip(self._buffers.context.state.cache.tensors(), snapshot.get("cache", ())):
            target.copy_(saved)
        self._window, self._cached_steps, self._patches, self.reencodes, length = snapshot["host"]
        self._buffers.context.state.cache.length = length


def stream_bytes(forecaster: "TotoForecaster", batch: int, variates: int, capacity: int) -> int:
    """Device bytes of a stream's buffers (KV cache and state), measured on the meta device."""
    meta = StreamBuffers.allocate(forecaster.model, batch, variates, capacity, forecaster._data_dtype(), "meta")
    return sum(t.numel() * t.element_size() for t in meta.tensors())


def check_stream_memory(forecaster: "TotoForecaster", batch: int, variates: int, capacity: int) -> None:
    """Refuse a stream whose buffers do not fit in what the device can still give, naming both."""
    needed = stream_bytes(forecaster, batch, variates, capacity)
    available = available_bytes(forecaster.device)
    if available is not None and needed > available:
        raise StreamError(
            f"a stream of {batch} series x {variates} variates (a cache of {capacity} patches) needs "
            f"{format_bytes(needed)} on {forecaster.device}, but only {format_bytes(available)} is available"
        )


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short name for a model's weights: its class and a hash of every parameter's shape and sums."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().double()
        digest.update(f"{name}{tuple(tensor.shape)}{values.sum().item():.17g}{values.abs().sum().item():.17g}".encode())
    return f"{type(model).__name__}:{digest.hexdigest()[:16]}"

