"""Upstream's ``toto.scripts.finetune_toto`` path for :func:`load_finetuned_toto`.

Only loading a fine-tuned checkpoint is provided; fine-tuning itself (Lightning
training) stays upstream's.
"""

from ..checkpoints.lightning import load_finetuned_toto

__all__ = ["load_finetuned_toto"]
