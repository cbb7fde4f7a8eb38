"""Model families behind one interface (:class:`~.base.ModelFamily`), chosen from ``config.json``."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..checkpoints.reading import CheckpointFiles, read_config_json, resolve_checkpoint
from ..compile.policy import CompileOptions
from ..config import ConfigError
from ..toto2.model import Toto2Model
from .base import ModelFamily
from .toto1 import Toto1Family
from .toto2 import Toto2Family

FAMILIES: tuple[type[ModelFamily], ...] = (Toto1Family, Toto2Family)

__all__ = ["FAMILIES", "ModelFamily", "Toto1Family", "Toto2Family", "family_of", "load_family", "wrap_model"]


def family_of(config: Any, source: str) -> type[ModelFamily]:
    """The family whose ``accepts`` takes the parsed ``config.json`` read from ``source``."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a JSON object, found {type(config).__name__}")
    for family in FAMILIES:
        if family.accepts(config):
            return family
    raise ConfigError(
        f"{source}: not a config of a known model family ({', '.join(f.name for f in FAMILIES)}); "
        f"its keys: {sorted(config)}"
    )


def wrap_model(model: Any, compile: CompileOptions = CompileOptions()) -> ModelFamily:
    """The family of a loaded model object (:class:`~toto.model.toto.Toto` or
    :class:`~toto.toto2.model.Toto2Model`)."""
    if isinstance(model, Toto2Model):
        return Toto2Family(model, compile)
    return Toto1Family(model, compile)


def read_family(files: CheckpointFiles) -> type[ModelFamily]:
    return family_of(read_config_json(files.config), str(files.config))


def load_family(
    model_id_or_path: str | os.PathLike,
    *,
    device: torch.device,
    dtype: torch.dtype | None = None,
    compile: CompileOptions = CompileOptions(),
    **hub_options: Any,
) -> ModelFamily:
    """Resolve (hub id or local path), pick the family from ``config.json`` and load it."""
    files = resolve_checkpoint(model_id_or_path, **hub_options)
    return read_family(files).from_files(files, device=device, dtype=dtype, compile=compile)
