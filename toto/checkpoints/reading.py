"""Checkpoint reading: hub id or local path -> config.json + model.safetensors -> config and weights.

Every failure names the file and, where it applies, the key. :meth:`Toto.from_state`
checks the weights against the model *before* anything is assigned, so a bad checkpoint
never leaves a half-loaded model behind. This module knows no model class: the model
imports it, not the other way round.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import DEFAULT_MODEL_ID, ConfigError, TotoConfig  # noqa: F401 (DEFAULT_MODEL_ID: read here too)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Large checkpoints (Toto 2.0's 2.5B in float32) may be saved in shards listed by an index.
INDEX_NAME = "model.safetensors.index.json"

# SwiGLU weights: the published checkpoint's fused names (xFormers) and ours, (published, ours).
_SWIGLU_NAMES = (("mlp.0.w12", "mlp.0"), ("mlp.0.w3", "mlp.2"))
_KEY_RENAMES = tuple((re.compile(rf"\.{re.escape(published)}\."), f".{ours}.") for published, ours in _SWIGLU_NAMES)
# Anchored at the parameter name: ours ("mlp.0") is a prefix of the published "mlp.0.w3".
_TO_PUBLISHED = tuple(
    (re.compile(rf"\.{re.escape(ours)}\.(weight|bias)$"), rf".{published}.\1") for published, ours in _SWIGLU_NAMES
)
# Parameters of upstream's enable_variate_labels() (fine-tuning with exogenous features):
# a checkpoint holding them loads into a model with variate labels enabled.
VARIATE_LABEL_KEYS = ("model.target_variate_label", "model.exogenous_variate_label")
# A stale buffer upstream drops on load; we recompute rotary frequencies instead.
_IGNORED_KEY = re.compile(r"(^|\.)rotary_emb\.freqs$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose tensors do not fit the model."""


@dataclass(frozen=True)
class CheckpointFiles:
    config: Path
    weights: Path


def resolve_checkpoint(
    model_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    force_download: bool = False,
) -> CheckpointFiles:
    """Find ``config.json`` and ``model.safetensors`` in a folder, beside a weights file, or on the hub."""
    path = Path(os.path.expanduser(str(model_id_or_path)))
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        sharded = not weights.exists() and (path / INDEX_NAME).is_file()
        return _local_files(path / CONFIG_NAME, path / INDEX_NAME if sharded else weights)
    if path.is_file():
        return _local_files(path.parent / CONFIG_NAME, path)
    name = str(model_id_or_path)
    if not _looks_like_repo_id(name):
        raise FileNotFoundError(f"checkpoint not found: {name!r} is neither an existing path nor a hub repo id")
    hub = (revision, cache_dir, local_files_only, token, force_download)
    config = _hub_download(name, CONFIG_NAME, *hub)
    try:
        return CheckpointFiles(config, _hub_download(name, WEIGHTS_NAME, *hub))
    except FileNotFoundError as single:
        try:
            index = _hub_download(name, INDEX_NAME, *hub)
        except FileNotFoundError:
            raise single from None
        for shard in sorted(set(_weight_map(index).values())):  # beside the index in the hub's cache
            _hub_download(name, shard, *hub)
        return CheckpointFiles(config, index)


def resolve_config(model_id_or_path: str | os.PathLike) -> Path:
    """Only the ``config.json`` of a checkpoint (a folder, beside a weights file, or from the hub)."""
    path = Path(os.path.expanduser(str(model_id_or_path)))
    if path.is_dir() or path.is_file():
        config = (path if path.is_dir() else path.parent) / CONFIG_NAME
        if not config.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {config}")
        return config
    name = str(model_id_or_path)
    if not _looks_like_repo_id(name):
        raise FileNotFoundError(f"checkpoint not found: {name!r} is neither an existing path nor a hub repo id")
    return _hub_download(name, CONFIG_NAME, None, None, False, None, False)


def read_config_json(path: Path) -> Any:
    """``config.json`` parsed, not yet interpreted (any model family)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from err


def read_config(path: Path) -> TotoConfig:
    return TotoConfig.from_dict(read_config_json(path), source=str(path))


def read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, or of the shards a ``model.safetensors.index.json`` lists."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if Path(path).name.endswith(".index.json"):
        weight_map = _weight_map(Path(path))
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            for key, tensor in read_weights(Path(path).parent / shard).items():
                if weight_map.get(key) != shard:
                    listed = weight_map.get(key)
                    raise CheckpointError(f"{path}: key {key!r} is in shard {shard!r}, but the index says {listed!r}")
                state[key] = tensor
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise CheckpointError(f"{path}: keys listed in the index but in no shard: {missing}")
        return state
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file ({err})") from err


def _weight_map(index: Path) -> dict[str, str]:
    """An index's ``weight_map`` (tensor name -> shard file name), checked."""
    try:
        weight_map = json.loads(Path(index).read_text()).get("weight_map")
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{index}: not a readable safetensors index ({err})") from err
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and "/" not in v for v in weight_map.values()):
        raise CheckpointError(f"{index}: key 'weight_map' must map tensor names to shard file names")
    return weight_map


def map_checkpoint_keys(state: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Rename published SwiGLU keys to ours and drop ``rotary_emb.freqs``."""
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state.items():
        if _IGNORED_KEY.search(key):
            continue
        new_key = key
        for pattern, replacement in _KEY_RENAMES:
            new_key = pattern.sub(replacement, new_key)
        if new_key in mapped:
            raise CheckpointError(
                f"{source}: keys {origin[new_key]!r} and {key!r} are two spellings of the same weight {new_key!r}"
            )
        mapped[new_key] = tensor
        origin[new_key] = key
    return mapped


def published_key(key: str) -> str:
    """Our parameter name as the published checkpoint spells it; :func:`map_checkpoint_keys` is the inverse."""
    for pattern, replacement in _TO_PUBLISHED:
        key = pattern.sub(replacement, key)
    return key


def check_weights(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected or mis-shaped key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key in sorted(set(expected) & set(state)):
        if tuple(state[key].shape) != expected[key]:
            problems.append(f"key {key!r} has shape {tuple(state[key].shape)}, expected {expected[key]}")
        elif not state[key].is_floating_point():
            problems.append(f"key {key!r} has non-floating dtype {state[key].dtype}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def read_checkpoint(files: CheckpointFiles) -> tuple[TotoConfig, dict[str, Tensor]]:
    """The config and the weights (under our key names) of a checkpoint; :meth:`Toto.from_state` builds the model."""
    return read_config(files.config), map_checkpoint_keys(read_weights(files.weights), source=str(files.weights))


def own_memory(model: torch.nn.Module) -> None:
    """Copy CPU tensors still backed by the checkpoint file's memory map into memory of their own.

    safetensors maps the whole file; one tensor left on the map keeps all of it resident
    beside the copies (a second copy of the weights, measured at full size). The weights
    stored column-major are copies already (non-contiguous); the rest are copied here.
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_contiguous():
            tensor.data = tensor.data.clone()


def _local_files(config: Path, weights: Path) -> CheckpointFiles:
    for path in (config, weights):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
    return CheckpointFiles(config, weights)


def _looks_like_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or name.endswith(".safetensors") or os.sep in name.replace("/", ""):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _hub_download(repo_id, filename, revision, cache_dir, local_files_only, token, force_download) -> Path:
    from huggingface_hub import hf_hub_download

    unreachable = None if local_files_only else _hub_unreachable()
    try:
        return Path(
            hf_hub_download(
                repo_id=repo_id,
                filename=filename,
                revision=revision,
                cache_dir=cache_dir,
                # Unreachable: the cache alone, rather than huggingface_hub's ~30 s of retries.
                local_files_only=local_files_only or unreachable is not None,
                token=token,
                force_download=force_download and unreachable is None,
            )
        )
    except Exception as err:  # the hub's many error types: offline, not found, gated, ...
        reason = f"{unreachable} (and no copy in the cache)" if unreachable else str(err)
        raise FileNotFoundError(
            f"could not get {filename!r} for hub repo {repo_id!r} (revision {revision or 'main'}): {reason}; "
            "no network? use a local checkpoint folder (--model DIR; "
            "'toto-compiled export --random-weights DIR' writes one)"
        ) from err


def _hub_unreachable() -> str | None:
    """Why the hub's host cannot be resolved, or None: one quick lookup instead of timed-out retries.

    Behind a proxy the proxy resolves names, so there is nothing to probe here.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(constants.ENDPOINT).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except OSError as err:  # socket.gaierror: no DNS, no network
        return f"cannot reach {host} ({err})"
    return None
