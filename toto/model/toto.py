"""``Toto``: the checkpoint-level module (``model`` holds the backbone), with loaders."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..config import TotoConfig
from ..checkpoints.reading import (
    DEFAULT_MODEL_ID,
    VARIATE_LABEL_KEYS,
    check_weights,
    own_memory,
    read_checkpoint,
    resolve_checkpoint,
)
from .backbone import TotoBackbone
from .layers import column_major_linear_weights


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
        return cls.from_state(*read_checkpoint(files), str(files.weights), device=map_location or device, dtype=dtype)

    def save_pretrained(self, directory: str | os.PathLike) -> list:
        """Write ``config.json`` + ``model.safetensors`` (published names) that :meth:`from_pretrained` loads.

        Written through a temporary folder renamed into place (:func:`toto.checkpoints.writing.save_pretrained`).
        """
        from ..checkpoints.writing import save_pretrained

        return save_pretrained(self, directory)

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
        files = resolve_checkpoint(path)
        return cls.from_state(*read_checkpoint(files), str(files.weights), device=map_location, dtype=dtype)

    @classmethod
    def from_state(
        cls,
        config: TotoConfig,
        state: dict[str, torch.Tensor],
        source: str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> "Toto":
        """A model holding ``state`` (our key names), checked in full before anything is assigned.

        ``source`` names the weights in errors; ``dtype``: default, the state's own. A state
        with variate labels (fine-tuned with exogenous features) switches them on.
        """
        with torch.device("meta"):
            model = cls(config)
            if any(key in state for key in VARIATE_LABEL_KEYS):
                model.model.enable_variate_labels()
        check_weights(model, state, source=source)
        if dtype is None:
            dtype = next(iter(state.values())).dtype
        model.load_state_dict(state, strict=True, assign=True)
        model = model.to(device=device, dtype=dtype).eval()
        column_major_linear_weights(model)
        if model.device.type == "cpu":
            own_memory(model)
        return model

