"""The options that ``predict_df``, backtests and the Ray engine share, checked once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..arguments import check_int
from .panel import check_quantile_levels, target_names

DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_FRAME_BATCH_SIZE = 32  # series per batch in predict_df and backtests
DEFAULT_FRAME_SAMPLES = 256


@dataclass(frozen=True)
class FrameOptions:
    """How to read a long frame (one row per item and timestamp) and what to forecast for it.

    ``target`` is normalised to a tuple of column names and ``quantile_levels`` to a tuple of
    floats; ``samples_per_batch=None`` means ``num_samples``. Invalid values raise
    ``ValueError`` naming the argument.
    """

    prediction_length: int
    id_column: str = "item_id"
    timestamp_column: str = "timestamp"
    target: str | Sequence[str] = "target"
    quantile_levels: Sequence[float] = DEFAULT_QUANTILES
    num_samples: int = DEFAULT_FRAME_SAMPLES
    samples_per_batch: int | None = None
    batch_size: int = DEFAULT_FRAME_BATCH_SIZE
    seed: int | None = None
    targets: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        check_int("prediction_length", self.prediction_length)
        check_int("num_samples", self.num_samples)
        check_int("batch_size", self.batch_size)
        if self.samples_per_batch is None:
            object.__setattr__(self, "samples_per_batch", self.num_samples)
        check_int("samples_per_batch", self.samples_per_batch)
        object.__setattr__(self, "targets", target_names(self.target))
        object.__setattr__(self, "quantile_levels", tuple(check_quantile_levels(self.quantile_levels)))

    @property
    def columns(self) -> list[str]:
        """The columns a frame must hold: id, timestamp, targets."""
        return [self.id_column, self.timestamp_column, *self.targets]
