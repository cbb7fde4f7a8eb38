"""Upstream's ``toto.scripts.finetune_toto`` path for :func:`load_finetuned_toto`.

Only loading a fine-tuned checkpoint is provided here; :meth:`toto.TotoPipeline.fit` fine-tunes.
"""

from __future__ import annotations

import os

import torch

from ..checkpoints.lightning import read_finetuned_checkpoint
from ..model.toto import Toto

__all__ = ["load_finetuned_toto"]


def load_finetuned_toto(
    model_id: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
) -> Toto:
    """Load a model fine-tuned by upstream's ``finetune_toto.py``, ready for inference.

    ``model_id`` (hub id or local folder) supplies ``config.json``, the architecture
    fine-tuning started from; ``checkpoint_path`` supplies every weight. Besides a
    Lightning ``.ckpt``, a plain state dict saved with ``torch.save`` is accepted.

    Upstream returns its ``TotoForFinetuning``; this returns our :class:`Toto`. Both
    keep the backbone as ``.model``, so ``TotoForecaster(loaded.model)`` works alike.
    """
    config, state, source = read_finetuned_checkpoint(model_id, checkpoint_path)
    return Toto.from_state(config, state, source, device=map_location)
