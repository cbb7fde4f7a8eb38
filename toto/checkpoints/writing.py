"""Writing a model as ``config.json`` + ``model.safetensors`` that :meth:`Toto.from_pretrained` loads.

Weights go under the published checkpoint's names (xFormers' fused SwiGLU spelling
``mlp.0.w12``/``mlp.0.w3``), which our loader and upstream's both read; variate labels,
if enabled, are saved too and switch them on at load. Both files are written into a
temporary folder beside the target, which is then renamed into place: a crash or a full
disk never leaves a truncated or mismatched pair behind.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from .reading import CONFIG_NAME, WEIGHTS_NAME, check_weights, map_checkpoint_keys, published_key


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike) -> list[Path]:
    """Write ``model`` (a :class:`~toto.model.toto.Toto`: its weights and ``model.config``) into
    ``directory`` (created if needed; the two files replaced if there).

    Returns the paths of ``config.json`` and ``model.safetensors``.
    """
    directory = Path(os.path.expanduser(str(directory)))
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"save_pretrained: {directory} exists and is not a folder")
    state = published_state_dict(model)
    # Guard the renaming: what we write must map back onto this very model.
    check_weights(model, map_checkpoint_keys(state, source="save_pretrained"), source="save_pretrained")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        (staging / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        save_safetensors(state, staging / WEIGHTS_NAME)
        if directory.exists():
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                os.replace(staging / name, directory / name)
        else:
            os.rename(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [directory / CONFIG_NAME, directory / WEIGHTS_NAME]


def published_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """``model``'s weights under the published names, as contiguous CPU tensors (safetensors needs both)."""
    return {published_key(key): tensor.detach().to("cpu").contiguous() for key, tensor in model.state_dict().items()}


def save_safetensors(state: dict[str, Tensor], path: Path) -> None:
    """``save_file``, but with the permissions a new file gets here (safetensors makes it 0600)."""
    path.touch()  # created like any file: the umask decides its mode
    mode = stat.S_IMODE(path.stat().st_mode)
    save_file(state, str(path))
    path.chmod(mode)
