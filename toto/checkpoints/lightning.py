"""Upstream's fine-tuned Lightning ``.ckpt`` files (or plain state dicts): their weights under
our key names, read with ``torch.load(weights_only=True)`` only, never by full unpickling
(docs/ARCHITECTURE.md, "Notes by module").
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..config import TotoConfig
from .reading import (
    CheckpointError,
    map_checkpoint_keys,
    read_config,
    resolve_checkpoint,
)

STATE_DICT_KEY = "state_dict"  # where Lightning puts the module's weights
MODEL_PREFIX = "model."  # TotoForFinetuning.model and Toto.model: the backbone, under the same name
# torch.load(weights_only=True) messages: a class or function to import (code), or any other refusal.
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_UNPICKLER_ERROR = "WeightsUnpickler error:"


def read_finetuned_checkpoint(
    model_id: str | os.PathLike, checkpoint_path: str | os.PathLike
) -> tuple[TotoConfig, dict[str, Tensor], str]:
    """``config.json`` of ``model_id`` (hub id or folder: the architecture fine-tuning started from)
    and every weight of ``checkpoint_path`` (a Lightning ``.ckpt`` or a plain state dict saved with
    ``torch.save``), under our key names; the third item names the weights in errors."""
    path = Path(os.path.expanduser(str(checkpoint_path)))
    state = read_finetuned_state(path)  # first: a bad local file fails before any download
    check_model_prefix(state, str(path))
    return read_config(resolve_checkpoint(model_id).config), state, str(path)


def read_finetuned_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """The checkpoint's weights under our key names."""
    path = Path(path)
    state = _model_state(_load_weights_only(path), path)
    return map_checkpoint_keys(state, source=str(path))


def check_model_prefix(state: dict[str, Tensor], source: str) -> None:
    """A fine-tuning module's weights hold the backbone under ``model.``; a bare backbone's do not."""
    if state and not any(key.startswith(MODEL_PREFIX) for key in state):
        # Say so, rather than list every key as missing.
        raise CheckpointError(
            f"{source}: no key starts with {MODEL_PREFIX!r} (first key: {next(iter(state))!r}); "
            f"save the whole fine-tuning module's state dict, where the backbone's keys start with {MODEL_PREFIX!r}"
        )


def _load_weights_only(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"fine-tuned checkpoint not found: {path}")
    try:
        # Onto the CPU whatever map_location says: a Lightning file also holds the
        # optimizer's moments (twice the model's size), which the device never needs.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused:
            raise CheckpointError(_unsafe_message(path, refused.group(1))) from err
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_torch_reason(err)})") from err
    except Exception as err:  # a damaged file fails in many ways: zip, EOF, key, struct errors
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err


def _unsafe_message(path: Path, refused_global: str) -> str:
    return (
        f"{path}: refusing to unpickle: loading it would run code the file names ({refused_global}), and "
        "fine-tuned checkpoints are only read with torch.load(weights_only=True) (tensors and plain data). "
        "If you trust the file, export its weights once in a trusted environment: "
        "ckpt = torch.load(path, weights_only=False); torch.save(ckpt['state_dict'], 'weights.pt'); "
        "then load 'weights.pt' instead."
    )


def _torch_reason(err: Exception) -> str:
    """The weights-only unpickler's own reason, without the advice torch wraps around it."""
    text = str(err)
    start = text.find(_UNPICKLER_ERROR)
    if start >= 0:
        text = text[start + len(_UNPICKLER_ERROR):].split("Check the documentation")[0]
    return " ".join(text.split()) or type(err).__name__


def _model_state(checkpoint: object, path: Path) -> dict[str, Tensor]:
    """The weights: Lightning's ``state_dict`` entry, or the whole file if it is a plain state dict."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(checkpoint).__name__}")
    if STATE_DICT_KEY in checkpoint:
        state, where = checkpoint[STATE_DICT_KEY], f"{path}, key {STATE_DICT_KEY!r}"
    elif checkpoint and all(isinstance(value, Tensor) for value in checkpoint.values()):
        state, where = checkpoint, str(path)
    else:
        raise CheckpointError(
            f"{path}: no {STATE_DICT_KEY!r} key (found {sorted(map(str, checkpoint))}); expected a Lightning "
            "checkpoint or a plain state dict of tensors"
        )
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: expected a dict of tensors, found {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return dict(state)
