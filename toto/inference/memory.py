"""Refuse or shrink forecasts that cannot fit in memory, before anything big is allocated.

:func:`estimate_memory` is a *lower bound* on a forecast's peak bytes (KV caches and
sample outputs; plain ``int`` arithmetic, microseconds even for absurd requests).
:func:`fit_samples_per_batch` compares it with :func:`available_bytes` (on a CPU the
smallest of free memory, the address-space limit and the cgroup's limits) and returns
the largest ``samples_per_batch`` that fits, or raises ``ValueError`` naming the
argument to change when even one sample row per series does not fit.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

try:
    import resource
except ImportError:  # not on Windows
    resource = None

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
    samples_per_batch: int = 1,
) -> MemoryEstimate:
    """Lower bound on a forecast's peak memory when ``samples_per_batch`` sample rows per series decode at once.

    Counted: the KV cache, per time-wise layer keys and values ``[rows, heads, slots,
    head_dim]``: the context's rows (one per series and variate) over the context plus
    the decoded patches, rounded up to a bucket, and when sampling the sample rows'
    own cache of the decoded patches (without a cache: one layer's keys and values of
    the whole grown series, for every row of a sample batch); and the outputs, every
    sample path of the padded horizon ``OUTPUT_COPIES`` times (the batches and their
    concatenation are alive together). ``dtype`` is the data dtype (inputs and
    forecasts); the cache is in the model's dtype.
    """
    steps = -(-prediction_length // model.config.patch_size)
    rows = batch * variates
    # Rows of a sample batch per context row; the mean path has none of its own.
    repeats = 1 if num_samples is None else min(samples_per_batch, num_samples)
    if use_kv_cache:
        sample_rows = 0 if num_samples is None or steps == 1 else rows * repeats  # one step only draws
        cache = _kv_cache_bytes(model, rows, sample_rows, context_patches, steps)
    else:
        cache = _uncached_kv_bytes(model, rows * repeats, context_patches, steps)
    one_path = OUTPUT_COPIES * rows * steps * model.config.patch_size * dtype.itemsize
    return MemoryEstimate(cache, one_path * (num_samples or 1), one_path)


def _kv_cache_bytes(model: TotoBackbone, rows: int, sample_rows: int, context_patches: int, steps: int) -> int:
    """Keys and values of every time-wise layer: the context's ``rows`` and the ``sample_rows``."""
    config = model.config
    layers = max(1, model.transformer.num_time_layers)  # KVCache keeps at least one layer
    per_row_slot = 2 * layers * config.num_heads * config.head_dim * _model_itemsize(model)
    context = rows * bucket_capacity(context_patches + steps - 1)
    # Sample rows decode in a cache of their own, of the decoded patches only (the context's is shared).
    samples = sample_rows * decode_capacity(steps - 1) if sample_rows else 0
    return (context + samples) * per_row_slot


def _uncached_kv_bytes(model: TotoBackbone, rows: int, context_patches: int, steps: int) -> int:
    """Without a cache, the last step still projects keys and values of the whole grown series, one layer at a time.

    Counted at no more than 2 bytes an element: autocast may compute in half precision.
    """
    config = model.config
    tokens = rows * (context_patches + steps - 1)
    return 2 * tokens * config.num_heads * config.head_dim * min(_model_itemsize(model), 2)


def _model_itemsize(model: TotoBackbone) -> int:
    return model.unembed.weight.dtype.itemsize  # the dtype decode buffers allocate their cache in


@dataclass(frozen=True)
class LimitFiles:
    """Where a CPU's memory limits are read (Linux); tests point these at temporary files."""

    meminfo: Path = Path("/proc/meminfo")
    status: Path = Path("/proc/self/status")  # VmSize: the address space the process already uses
    cgroups: Path = Path("/proc/self/cgroup")  # the process's cgroup in each hierarchy
    cgroup_mount: Path = Path("/sys/fs/cgroup")  # v2 here; v1's memory controller under memory/


LIMIT_FILES = LimitFiles()


def available_bytes(device: torch.device | str, files: LimitFiles | None = None) -> int | None:
    """Bytes that allocations on ``device`` can still get, or None where that is unknown.

    CUDA: the driver's free memory plus what torch's caching allocator reserved but
    does not use. CPU: the smallest of the system's available memory plus free swap,
    what the address-space limit (``RLIMIT_AS``) leaves, and what every memory cgroup
    above the process leaves (``files``: where those are read, default ``LIMIT_FILES``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return _cpu_available_bytes(files or LIMIT_FILES)
    return None


def _cpu_available_bytes(files: LimitFiles) -> int:
    info = _read_table(files.meminfo)
    if "MemAvailable" in info:
        system = info["MemAvailable"] + info.get("SwapFree", 0)
    else:  # no /proc (e.g. macOS)
        system = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limits = [system, *_cgroup_headroom(files, info.get("SwapFree", 0))]
    address_space = _address_space_limit()
    if address_space is not None:
        limits.append(address_space - _read_table(files.status).get("VmSize", 0))
    return max(0, min(limits))


def _address_space_limit() -> int | None:
    """The soft ``RLIMIT_AS`` (the one enforced), or None where unlimited or unknown."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY or soft < 0 else soft


# Per cgroup version: the limit, the usage and memory.stat's reclaimable page cache.
_CGROUP_V2 = ("memory.max", "memory.current", ("active_file", "inactive_file"))
_CGROUP_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", ("total_active_file", "total_inactive_file"))


def _cgroup_headroom(files: LimitFiles, swap_free: int) -> list[int]:
    """What each memory cgroup from the process's own up to the mount's root leaves, v2 and v1.

    A limit applies to everything below it, so every level counts. Usage includes page
    cache the kernel reclaims before it kills, so the file pages are given back, as is
    free swap the cgroup may use: the guard only refuses what cannot fit.
    """
    own = _own_cgroups(files.cgroups)
    hierarchies = (
        (files.cgroup_mount, own.get("", "/"), _CGROUP_V2),
        (files.cgroup_mount / "memory", own.get("memory", "/"), _CGROUP_V1),
    )
    headroom = []
    for root, path, (limit_file, usage_file, cache_keys) in hierarchies:
        for folder in _up_to(root, path):
            limit, usage = _read_number(folder / limit_file), _read_number(folder / usage_file)
            if limit is None or usage is None:  # "max" or no limit here
                continue
            cache = _read_table(folder / "memory.stat")
            reclaimable = sum(cache.get(key, 0) for key in cache_keys)
            headroom.append(limit - usage + reclaimable + _cgroup_swap(folder, swap_free))
    return headroom


def _cgroup_swap(folder: Path, swap_free: int) -> int:
    """Free swap a cgroup may use: v2 limits it apart (v1's memsw limit is not read: that only lets more through)."""
    limit, usage = _read_number(folder / "memory.swap.max"), _read_number(folder / "memory.swap.current")
    return swap_free if limit is None or usage is None else min(swap_free, max(0, limit - usage))


def _own_cgroups(path: Path) -> dict[str, str]:
    """The process's cgroup path by controller (``""``: the v2 hierarchy) from ``/proc/self/cgroup``."""
    own = {}
    for line in _read_lines(path):
        fields = line.split(":", 2)  # hierarchy id, controllers, path
        if len(fields) == 3:
            own.update((controller, fields[2]) for controller in fields[1].split(","))
    return own


def _up_to(root: Path, cgroup: str) -> list[Path]:
    """``root/cgroup`` and its parents up to ``root``, those that exist (in a container the
    process's path may be the host's, and its own cgroup the mount's root)."""
    folders = [root]
    for part in (p for p in cgroup.split("/") if p and p != ".."):
        folders.append(folders[-1] / part)
    return [folder for folder in reversed(folders) if folder.is_dir()]


def _read_lines(path: Path) -> list[str]:
    """A small system file's lines; none where it cannot be read (not Linux, no cgroup, no permission)."""
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _read_number(path: Path) -> int | None:
    """An int file of a cgroup; ``max`` (no limit) and unreadable or odd content: None."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_table(path: Path) -> dict[str, int]:
    """A ``name value [kB]`` table (``/proc/meminfo``, ``/proc/self/status``, ``memory.stat``) in bytes,
    ``name:`` colons allowed; empty where there is none."""
    table = {}
    for line in _read_lines(path):
        name, *fields = line.replace(":", " ", 1).split() or [""]
        if fields and fields[0].isdigit():
            table[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return table


def pooled_bytes(buffer_sets: Iterable[HoldsTensors]) -> int:
    """Bytes held by a forecaster's pooled decode buffers: a call may reuse them instead of allocating."""
    return sum(t.numel() * t.element_size() for buffers in buffer_sets for t in buffers.tensors())


def fit_samples_per_batch(
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
) -> int:
    """The sample rows per series to decode at once: ``samples_per_batch`` (at most
    ``num_samples``) if the forecast fits in ``device``'s memory, else the largest smaller
    value that does, with a ``RuntimeWarning``; ``ValueError`` if even 1 does not fit.

    A CPU has no out-of-memory error to back off from, so this sizes the batch up front.
    ``reusable_bytes``: memory the caller already holds and may reuse for this forecast
    (:func:`pooled_bytes` of its decode buffers); it counts as available, or a repeated
    large call that reuses its buffers would be refused.
    """
    request = dict(batch=batch, variates=variates, context_patches=context_patches,  # estimate_memory's arguments,
                   prediction_length=prediction_length, num_samples=num_samples,  # less samples_per_batch
                   dtype=dtype, use_kv_cache=use_kv_cache)  # fmt: skip
    wanted = samples_per_batch if num_samples is None else min(samples_per_batch, num_samples)
    fits, needed, available = _largest_fitting(model, request, wanted, device, reusable_bytes)
    if fits < wanted:
        warnings.warn(
            f"samples_per_batch={wanted} would need at least {format_bytes(needed)} but only "
            f"{format_bytes(available)} is available on {torch.device(device)}; using samples_per_batch={fits}",
            RuntimeWarning,
            stacklevel=4,  # the caller of TotoForecaster.forecast
        )
    return fits


def check_memory(model: TotoBackbone, **request: Any) -> None:
    """Raise ``ValueError`` if the forecast cannot fit in memory even at one sample row per
    series, the batch :func:`fit_samples_per_batch` may shrink to; ``request``: its arguments."""
    fit_samples_per_batch(model, **{**request, "samples_per_batch": 1})


def _largest_fitting(
    model: TotoBackbone, request: dict, wanted: int, device: torch.device, reusable_bytes: int
) -> tuple[int, int, int]:
    """``(largest samples_per_batch <= wanted that fits, bytes wanted needs, bytes available)``."""
    available = available_bytes(device)
    if available is None:
        return wanted, 0, 0
    available += reusable_bytes

    def needs(per_batch: int) -> int:
        return estimate_memory(model, **request, samples_per_batch=per_batch).total

    needed = needs(wanted)
    if needed <= available:
        return wanted, needed, available
    smallest = estimate_memory(model, **request)  # at one sample row per series
    if smallest.total > available:
        backed_off = ", even at samples_per_batch=1" if wanted > 1 else ""
        raise ValueError(
            f"{_culprit(model, request)}: this forecast needs at least {format_bytes(smallest.total)} "
            f"({format_bytes(smallest.cache_bytes)} KV cache, {format_bytes(smallest.output_bytes)} outputs{backed_off}) "
            f"but only {format_bytes(available)} is available on {torch.device(device)}"
            f"{_hint(smallest, available, request['num_samples'])}"
        )
    fits, too_big = 1, wanted  # the need grows with the batch: bisect, bit_length(wanted) estimates
    while too_big - fits > 1:
        middle = (fits + too_big) // 2
        fits, too_big = (middle, too_big) if needs(middle) <= available else (fits, middle)
    return fits, needed, available


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
