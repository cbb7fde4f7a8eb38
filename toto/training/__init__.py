"""Fine-tuning Toto without Lightning: windows, the loss, a compiled training step and the loop.

:meth:`toto.TotoPipeline.fit` is the usual entry point; ``python -m toto.training`` (under
``torchrun`` for several processes) is the command line's.
"""

from .fit import FitHistory, FitOptions, fit_backbone, set_dropout
from .loss import combined_loss, robust_loss
from .schedule import warmup_stable_decay
from .step import TrainingDiverged, TrainingStep, WindowLoss, trainable_parameters
from .windows import TrainingSeries, WindowSampler, Windows, last_windows, training_series

__all__ = [
    "FitHistory",
    "FitOptions",
    "TrainingDiverged",
    "TrainingSeries",
    "TrainingStep",
    "WindowLoss",
    "WindowSampler",
    "Windows",
    "combined_loss",
    "fit_backbone",
    "last_windows",
    "robust_loss",
    "set_dropout",
    "trainable_parameters",
    "training_series",
    "warmup_stable_decay",
]
