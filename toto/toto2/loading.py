"""Loading a Toto 2.0 checkpoint (``config.json`` + ``model.safetensors``, as upstream's
``save_pretrained`` writes them), checked in full before any weight is assigned."""

from __future__ import annotations

import torch

import os
from pathlib import Path
from typing import Any, Mapping

from ..checkpoints.reading import CheckpointFiles, check_weights, own_memory, read_config_json, read_weights
from ..checkpoints.writing import save_pretrained
from ..model.layers import column_major_linear_weights
from .config import Toto2Config
from .model import Toto2Model


def read_toto2_config(files: CheckpointFiles) -> Toto2Config:
    return Toto2Config.from_dict(read_config_json(files.config), source=str(files.config))


def load_toto2(
    files: CheckpointFiles, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> Toto2Model:
    """The model of ``files`` on ``device``; ``dtype`` None keeps the file's."""
    config = read_toto2_config(files)
    state = read_weights(files.weights)
    with torch.device("meta"):
        model = Toto2Model(config)
    check_weights(model, state, source=str(files.weights))
    model.load_state_dict(state, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype or next(iter(state.values())).dtype).eval()
    column_major_linear_weights(model)
    if model.patch_proj.linear1.weight.device.type == "cpu":
        own_memory(model)
    return model


def write_random_toto2(directory: str | os.PathLike, config: Mapping[str, Any], seed: int = 0) -> Path:
    """A Toto 2.0 checkpoint with upstream's initialisation (unit-variance weights, zero biases)
    drawn from ``seed``, in the layout ``Toto2Model.save_pretrained`` writes; returns ``directory``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Toto2Model(Toto2Config.from_dict(config, source="config"))
    save_pretrained(model, directory)
    return Path(directory)
