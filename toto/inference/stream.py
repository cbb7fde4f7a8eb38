"""``LiveStream``: live series whose encoded past (KV cache, scaler state) persists between calls.

Host bookkeeping only (Python ints, the raw window on the CPU); what a model family computes
is its engine's (:mod:`toto.inference.stream_engines`).

The cache holds whole patches on a grid set when the context was last encoded: a context
of ``n`` steps is left-padded to whole patches, as a fresh call pads it. Appended steps
complete the patch after the cached ones; each completed patch is one cached step. Steps
that do not complete a patch wait (``pending``); a forecast with steps pending re-encodes
the window, because a fresh call on that length puts the patch boundaries elsewhere, and
the new grid then holds for the appends that follow.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from ..arguments import check_int
from .capacity import bucket_capacity
from .likelihood import StepScores
from .memory import available_bytes, format_bytes

STATE_FORMAT = "toto-stream/1"


class StreamError(ValueError):
    """A stream refused a call; the stream is unchanged."""


class LiveStream:
    """Series (``[batch, variate, time]``, NaN missing) whose forecasts reuse their encoded past.

    :meth:`append` takes new steps, :meth:`forecast` equals a fresh forecast of :attr:`context`
    (the window the stream holds: at most ``max_context`` steps; when an append would pass
    it, the window is cut to its last ``keep`` steps and re-encoded once). ``engine``: the
    model family's side (:mod:`toto.inference.stream_engines`).
    """

    def __init__(self, engine: Any, series: Tensor, *, max_context: int, keep: int, version: str):
        if not 0 < keep <= max_context:
            raise ValueError(f"keep must be in [1, max_context={max_context}], got {keep}")
        self._setup(engine, max_context, keep, version, reencodes=0)
        batch, variates, _ = series.shape
        check_stream_memory(engine, batch, variates, self.capacity)
        engine.allocate(batch, variates, self.capacity)
        self._window = series[..., -max_context:].float().cpu().clone()
        self._encode(self._window)

    def _setup(self, engine: Any, max_context: int, keep: int, version: str, reencodes: int) -> None:
        self._engine = engine
        self.max_context, self.keep, self.version = max_context, keep, version
        self.capacity = bucket_capacity(-(-max_context // engine.patch_size) + 1)  # + 1: a left-padded first patch
        self._cached_steps = 0  # steps of the window that the cache holds (the rest are pending)
        self._patches = 0  # patches in the cache
        self.closed = False
        self.reencodes = reencodes  # how often the window was encoded whole (first encoding included)
        self._snapshot: dict[str, Any] | None = None  # during an append: what a failure restores

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

    def window_for(self, forecaster: Any) -> Tensor:
        """:attr:`context`, for a caller that scores it with ``forecaster``'s model: refused if
        the stream is closed or was opened on another model."""
        self._check_open()
        if forecaster is not self._engine.forecaster:
            raise StreamError("this stream was opened by another pipeline; score it with that pipeline")
        return self.context

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
        snapshot = self._snapshot = self._take_snapshot()
        try:
            if self._window.shape[-1] + new.shape[-1] > self.max_context:
                self._encode(self._window[..., -max(self.keep - new.shape[-1], self._engine.patch_size) :])
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
    ) -> Any:
        """What a fresh forecast of :attr:`context` gives. Toto 1.0: a
        :class:`~toto.inference.forecaster.Forecast`, the mean path (``num_samples=None``) or
        sample paths (``samples`` ``[batch, variate, prediction_length, num_samples]``). Toto
        2.0: :class:`~toto.inference.stream_engines.StreamQuantiles` (no samples or seed)."""
        self._check_open()
        check_int("prediction_length", prediction_length)
        check_int("samples_per_batch", samples_per_batch)
        if self.pending:
            self._encode(self._window)  # the grid a fresh call on this length uses
        with self._engine.running():
            return self._engine.forecast(self._patches, prediction_length, num_samples, samples_per_batch, seed)

    def close(self) -> None:
        """Free the stream's buffers; later calls raise."""
        self.closed = True
        self._engine = None

    def nbytes(self) -> int:
        """Bytes the stream holds on its device (KV cache and state) plus its window on the CPU."""
        self._check_open()
        return sum(t.numel() * t.element_size() for t in self._engine.tensors()) + self._window.numel() * 4

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`from_state` needs to resume with identical forecasts (CPU tensors)."""
        self._check_open()
        return {
            "format": STATE_FORMAT,
            "version": self.version,
            "model": model_fingerprint(self._engine.model),
            "max_context": self.max_context,
            "keep": self.keep,
            "window": self._window.clone(),
            "cached_steps": self._cached_steps,
            "patches": self._patches,
            "reencodes": self.reencodes,
            "engine": self._engine.options(),
            "buffers": [t.detach().cpu().clone() for t in self._engine.tensors()],
        }

    @classmethod
    def from_state(cls, engine: Any, state: dict[str, Any], version: str) -> "LiveStream":
        """A stream resumed from :meth:`state_dict` on ``engine``'s model (made with the state's
        ``engine`` options); another model's or another version's state is refused, naming both."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise StreamError(f"not a stream state (expected format {STATE_FORMAT!r})")
        if state["version"] != version:
            raise StreamError(f"stream state from toto-compiled {state['version']}; this is toto-compiled {version}")
        ours = model_fingerprint(engine.model)
        if state["model"] != ours:
            raise StreamError(f"stream state from model {state['model']}; this pipeline's model is {ours}")
        stream = cls.__new__(cls)
        stream._setup(engine, state["max_context"], state["keep"], version, state["reencodes"])
        window = state["window"]
        targets = engine.allocate(window.shape[0], window.shape[1], stream.capacity)
        if len(targets) != len(state["buffers"]) or any(t.shape != s.shape for t, s in zip(targets, state["buffers"])):
            raise StreamError("stream state does not match this model's buffers")
        for target, saved in zip(targets, state["buffers"]):
            target.copy_(saved)
        stream._window = window.clone()
        stream._cached_steps, stream._patches = state["cached_steps"], state["patches"]
        engine.set_patches(stream._patches)
        return stream

    # ------------------------------------------------------------------ internals

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
        """One cached step per whole patch now available; re-encode if the engine says a step
        was not exact. With ``first_new`` (the window index of the first new step), the new
        steps' scores."""
        engine, patch = self._engine, self._engine.patch_size
        scores: list[StepScores] = []
        exact = True
        with engine.running():
            while True:
                chunk = self._window[..., self._cached_steps : self._cached_steps + patch]
                if first_new is not None:
                    scores.append(engine.head_scores(chunk, max(0, first_new - self._cached_steps)))
                if chunk.shape[-1] < patch:
                    break
                exact = engine.step(chunk, self._patches) and exact
                self._cached_steps += patch
                self._patches += 1
        if not exact:  # an earlier patch's clamp moved: encode the cached part afresh
            self._encode(self._window[..., : self._cached_steps], keep_window=True)
        if first_new is None:
            return None
        return StepScores(*(torch.cat(parts, dim=-1) for parts in zip(*scores)))

    @torch.no_grad()
    def _encode(self, window: Tensor, keep_window: bool = False) -> None:
        """Encode ``window`` whole on its own grid; the stream's window becomes it (unless ``keep_window``)."""
        if (~(~torch.isnan(window)).any(-1)).any():
            raise StreamError("every series needs an observed value in the window")
        if self._snapshot is not None and "cache" not in self._snapshot:  # an append in progress
            self._snapshot["cache"] = [t.clone() for t in self._engine.cache_tensors()]
        with self._engine.running():
            patches = self._engine.encode(window, self.capacity)
        if not keep_window:
            self._window = window.clone()
        self._cached_steps = window.shape[-1]
        self._patches = patches
        self.reencodes += 1

    def _take_snapshot(self) -> dict[str, Any]:
        """The state an append may change, but for the KV cache: a cached step writes only slots
        past the context, which nothing reads; an encode saves the cache first (:meth:`_encode`)."""
        cache = {id(t) for t in self._engine.cache_tensors()}
        return {
            "tensors": [None if id(t) in cache else t.clone() for t in self._engine.tensors()],
            "rewritten": self._engine.step_snapshot(self._patches),  # context slots a step rewrites
            "host": (self._window, self._cached_steps, self._patches, self.reencodes),
        }

    def _restore(self, snapshot: dict[str, Any]) -> None:
        for target, saved in zip(self._engine.tensors(), snapshot["tensors"]):
            if saved is not None:
                target.copy_(saved)
        for target, saved in zip(self._engine.cache_tensors(), snapshot.get("cache", ())):
            target.copy_(saved)
        self._window, self._cached_steps, self._patches, self.reencodes = snapshot["host"]
        if "cache" not in snapshot:  # the whole cache came back above, rewritten slots included
            self._engine.restore_step(snapshot["rewritten"], self._patches)
        self._engine.set_patches(self._patches)


def stream_bytes(engine: Any, batch: int, variates: int, capacity: int) -> int:
    """Device bytes of a stream's buffers (KV cache and state), measured on the meta device."""
    return sum(t.numel() * t.element_size() for t in engine.allocate(batch, variates, capacity, device="meta"))


def check_stream_memory(engine: Any, batch: int, variates: int, capacity: int) -> None:
    """Refuse a stream whose buffers do not fit in what the device can still give, naming both."""
    needed = stream_bytes(engine, batch, variates, capacity)
    available = available_bytes(engine.device)
    if available is not None and needed > available:
        raise StreamError(
            f"a stream of {batch} series x {variates} variates (a cache of {capacity} patches) needs "
            f"{format_bytes(needed)} on {engine.device}, but only {format_bytes(available)} is available"
        )


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short name for a model's weights: its class and a hash of every parameter's shape and sums."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().double()
        digest.update(f"{name}{tuple(tensor.shape)}{values.sum().item():.17g}{values.abs().sum().item():.17g}".encode())
    return f"{type(model).__name__}:{digest.hexdigest()[:16]}"
