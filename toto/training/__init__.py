"""Fine-tuning Toto without Lightning (in progress): the training loss and the learning-rate schedule."""

from .loss import combined_loss, robust_loss
from .schedule import warmup_stable_decay

__all__ = ["combined_loss", "robust_loss", "warmup_stable_decay"]
