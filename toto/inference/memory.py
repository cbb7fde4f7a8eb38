"""Refuse forecasts that cannot fit in memory, before anything big is allocated.

:func:`check_memory` compares a *lower bound* on the bytes a forecast needs with
what the device has free, and raises ``ValueError`` naming the argument to
change. It only counts what every code path must hold at once, at the smallest
batch a caller may back off to (one sample row per series), so a request that
fits is never refused; one that passes may still run out of memory later.

The two terms counted:

* the KV cache: per time-wise layer, keys and values of ``[batch * variates,
  heads, capacity, head_dim]``, capacity being the context plus the decoded
  patches rounded up to a bucket, for the context's buffers; and when sampling,
  the sample rows' own cache of the decoded patches (they share the context's);
  without a cache, the forward pass over the whole grown series still projects
  one layer's keys and values;
* the outputs: every sample path of the padded horizon, twice, because the
  decoded patches and their concatenation are alive together.

Everything is plain Python ``int`` arithmetic (no tensors, no overflow), so a
check takes microseconds even for absurd requests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Protocol

import torch

from ..model.backbone import TotoBackbone
from .capacity import bucket_capacity, decode_capacity

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
# Copies of the sample paths alive at once: the decoded patches and their concatenation
# (for a single step: the draw and its clone; for many batches: the batches and their concatenation).
OUTPUT_COPIES = 2


class HoldsTensors(Protocol):
    """A set of pooled buffers (``DecodeBuffers``, ``ContextBuffers``)."""

    def tensors(self) -> list[torch.Tensor]: ...


@dataclass(frozen=True)
class MemoryEstimate:
    """Lower bounds, in bytes, on what a forecast holds at its peak."""

    cache_bytes: int  # KV cache (or one layer's keys and values, without a cache)
    output_bytes: int  # all sample paths over the padded horizon, OUTPUT_COPIES times
    one_path_output_bytes: int  # the same with a single sample path per series

    @property
    def total(self) -> int:
        return self.cache_bytes + self.output_bytes

    @property
    def with_one_path(self) -> int:
        """What the forecast would need with ``num_samples`` at 1: the part more samples cannot shrink."""
        return self.cache_bytes + self.one_path_output_bytes


def estimate_memory(
    model: TotoBackbone,
    *,
    batch: int,
    variates: int,
    context_patches: int,
    prediction_length: int,
    num_samples: int | None,
    dtype: torch.dtype,
    use_kv_cache: bool = True,
) -> MemoryEstimate:
    """Lower bound on a forecast's peak memory at one sample row per series (see the module docstring).

    ``dtype`` is the data dtype (inputs and forecasts); the cache is in the model's dtype.
    """
    steps = -(-prediction_length // model.config.patch_size)
    rows = batch * variates
    if use_kv_cache:
        cache = _kv_cache_bytes(model, rows, context_patches, steps, sampled=num_samples is not None)
    else:
        cache = _uncached_kv_bytes(model, rows, context_patches, steps)
    one_path = OUTPUT_COPIES * rows * steps * model.config.patch_size * dtype.itemsize
    return MemoryEstimate(cache, one_path * (num_samples or 1), one_path)


def _kv_cache_bytes(model: TotoBackbone, rows: int, context_patches: int, steps: int, *, sampled: bool) -> int:
    """Keys and values of every time-wise layer: the context's rows and, when sampling, one sample row each."""
    config = model.config
    layers = max(1, model.transformer.num_time_layers)  # KVCache keeps at least one layer
    per_slot = 2 * layers * rows * config.num_heads * config.head_dim * _model_itemsize(model)
    slots = bucket_capacity(context_patches + steps - 1)
    if sampled and steps > 1:  # sample rows decode in a cache of their own, of the decoded patches only
        slots += decode_capacity(steps - 1)
    return slots * per_slot


def _uncached_kv_bytes(model: TotoBackbone, rows: int, context_patches: int, steps: int) -> int:
    """Without a cache, the last step still projects keys and values of the whole grown series, one layer at a time.

    Counted at no more than 2 bytes an element: autocast may compute in half precision.
    """
    config = model.config
    tokens = rows * (context_patches + steps - 1)
    return 2 * tokens * config.num_heads * config.head_dim * min(_model_itemsize(model), 2)


def _model_itemsize(model: TotoBackbone) -> int:
    return model.unembed.weight.dtype.itemsize  # the dtype decode buffers allocate their cache in


def available_bytes(device: torch.device | str) -> int | None:
    """Bytes that allocations on ``device`` can still get, or None where that is unknown.

    CUDA: the driver's free memory plus what torch's caching allocator reserved but
    does not use. CPU: the system's available memory plus free swap (both let an
    allocation succeed); cgroup limits are not read, which can only let more through.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return _system_available_bytes()
    return None


def _system_available_bytes() -> int:
    info = _read_meminfo()
    if "MemAvailable" in info:
        return info["MemAvailable"] + info.get("SwapFree", 0)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _read_meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/meminfo") as f:
            lines = f.readlines()
    except OSError:
        return {}
    info = {}
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            info[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return info


def pooled_bytes(buffer_sets: Iterable[HoldsTensors]) -> int:
    """Bytes held by a forecaster's pooled decode buffers: a call may reuse them instead of allocating."""
    return sum(t.numel() * t.element_size() for buffers in buffer_sets for t in buffers.tensors())


def check_memory(
    model: TotoBackbone,
    *,
    batch: int,
    variates: int,
    context_patches: int,
    prediction_length: int,
    num_samples: int | None,
    samples_per_batch: int,
    dtype: torch.dtype,
    device: torch.device,
    use_kv_cache: bool = True,
    reusable_bytes: int = 0,
) -> None:
    """Raise ``ValueError`` if the forecast cannot fit in ``device``'s memory.

    ``samples_per_batch`` does not enter the bound: a caller may back off to one
    sample row per series, so the bound assumes that. ``reusable_bytes``: memory the
    caller already holds and may reuse for this forecast (:func:`pooled_bytes` of
    its decode buffers); it counts as available, or a repeated large call that
    reuses its buffers would be refused.
    """
    available = available_bytes(device)
    if available is None:
        return
    available += reusable_bytes
    request = dict(
        batch=batch,
        variates=variates,
        context_patches=context_patches,
        prediction_length=prediction_length,
        num_samples=num_samples,
        dtype=dtype,
        use_kv_cache=use_kv_cache,
    )
    estimate = estimate_memory(model, **request)
    if estimate.total <= available:
        return
    backed_off = ", even at samples_per_batch=1" if samples_per_batch > 1 else ""
    raise ValueError(
        f"{_culprit(model, request)}: this forecast needs at least {format_bytes(estimate.total)} "
        f"({format_bytes(estimate.cache_bytes)} KV cache, {format_bytes(estimate.output_bytes)} outputs{backed_off}) "
        f"but only {format_bytes(available)} is available on {torch.device(device)}"
        f"{_hint(estimate, available, num_samples)}"
    )


def _culprit(model: TotoBackbone, request: dict) -> str:
    """The argument most responsible: the one whose smallest value would shrink the need the most.

    Memory grows with the product of samples, horizon and context, so the one that
    dominates a term is not enough: 4096 samples of a 10**9-step horizon are the
    horizon's fault, 10**12 samples of a short one the samples'.
    """
    smallest = {
        f"prediction_length={request['prediction_length']}": {"prediction_length": 1},
        "the context ({batch} series x {variates} variates x {context_patches} patches)".format(**request): {
            "context_patches": 1
        },
    }
    if request["num_samples"] is not None:
        smallest[f"num_samples={request['num_samples']}"] = {"num_samples": 1}
    # Ties go to the first: the horizon is the usual culprit.
    return min(smallest, key=lambda name: estimate_memory(model, **{**request, **smallest[name]}).total)


def _hint(estimate: MemoryEstimate, available: int, num_samples: int | None) -> str:
    if num_samples is None:
        return ""
    if estimate.with_one_path > available:
        return f"; even one sample path needs {format_bytes(estimate.with_one_path)}"
    per_sample = estimate.one_path_output_bytes
    return f"; at most {(available - estimate.cache_bytes) // per_sample} samples could fit"


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units with three significant digits, e.g. ``20.1 GiB``."""
    if n >= 1024 ** len(_UNITS):  # beyond YiB a float could overflow: give the power of two
        return f"about 2^{n.bit_length() - 1} B"
    power = 0
    while n >= 1024 ** (power + 1):
        power += 1
    if power == 0:
        return f"{n} B"
    value = n / 1024**power
    return f"{value:.3g} {_UNITS[power]}" if value < 999.5 else f"{value:.0f} {_UNITS[power]}"  # not "1e+03"
