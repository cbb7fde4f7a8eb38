"""``Toto``: the checkpoint-level module (``model`` holds the backbone), with loaders."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..config import TotoConfig
from ..loading import DEFAULT_MODEL_ID, load_toto, resolve_checkpoint
from .backbone import TotoBackbone


class Toto(nn.Module):
    """Toto-Open-Base-1.0 and relatives. Weight names match Datadog's checkpoint under ``model.``.

    Build from a :class:`TotoConfig`, or from the config's fields as keyword
    arguments (upstream's constructor).
    """

    def __init__(self, config: TotoConfig | None = None, **config_fields: Any):
        super().__init__()
        if config is None:
            config = TotoConfig.from_dict(config_fields, source="Toto(...)")
        elif config_fields:
            raise TypeError(f"Toto: pass a config or its fields, not both (got {sorted(config_fields)})")
        self.config = config
        self.model = TotoBackbone(config)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike = DEFAULT_MODEL_ID,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        map_location: torch.device | str | None = None,
    ) -> "Toto":
        """Load from a hub repo id (via ``huggingface_hub``) or a local folder / ``model.safetensors`` file.

        ``map_location`` is accepted as an alias of ``device`` (upstream's name).
        """
        files = resolve_checkpoint(
            model_id_or_path,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
        )
        return load_toto(files, device=map_location or device, dtype=dtype)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> "Toto":
        """Load a local folder (or ``model.safetensors`` with ``config.json`` beside it)."""
        path = os.path.expanduser(str(checkpoint_path))
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return load_toto(resolve_checkpoint(path), device=map_location, dtype=dtype)
