"""Toto 2.0 (``Datadog/Toto-2.0-*``) as a :class:`~toto.families.base.ModelFamily`: quantiles at
nine knots from :class:`~toto.toto2.model.Toto2Model`, decoded by
:class:`~toto.inference.toto2_forecaster.Toto2Forecaster`."""

from __future__ import annotations

import copy
import gc
import os
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ..checkpoints.reading import CheckpointFiles
from ..checkpoints.writing import save_pretrained
from ..compile.policy import CompileOptions
from ..data.util.dataset import fill_missing
from ..inference.quantile_scores import QuantileStepPredictions, quantile_step_predictions
from ..inference.toto2_forecaster import DEFAULT_DECODE_BLOCK_SIZE, Toto2Forecaster, check_block_size
from ..toto2.config import QUANTILE_LEVELS, TRAINED_CONTEXT, Toto2Config
from ..toto2.loading import load_toto2
from ..toto2.model import Toto2Model

from .base import ForecasterBacked, ModelFamily


def fill_forward(series: Tensor, observed: Tensor) -> Tensor:
    """Each unobserved value replaced by the last observed one before it (0 before the first),
    as upstream's GluonTS wrapper does; they stay unobserved, but the model reads the
    context's last patch as observed."""
    return fill_missing(torch.where(observed, series, torch.nan))[0]


class Toto2Family(ForecasterBacked, ModelFamily):
    name = "Toto 2.0"
    output = "quantiles"
    quantile_levels = QUANTILE_LEVELS

    def __init__(
        self,
        model: Toto2Model,
        compile: CompileOptions = CompileOptions(),
        decode_block_size: int | None = DEFAULT_DECODE_BLOCK_SIZE,
    ):
        self.model = model.eval()
        self.compile_options = compile
        self.decode_block_size = decode_block_size
        self.forecaster = Toto2Forecaster(model, compile.resolve(self.device))

    @property
    def decode_block_size(self) -> int | None:
        """Steps per decoding block (a multiple of the patch size); None or 0: one block."""
        return self._decode_block_size

    @decode_block_size.setter
    def decode_block_size(self, value: int | None) -> None:
        check_block_size(value, self.model.patch_size)
        self._decode_block_size = value

    @classmethod
    def accepts(cls, config: Mapping[str, Any]) -> bool:
        # Toto 2.0's own keys; anything else missing or wrong is Toto2Config's error, naming the key.
        return "d_model" in config and "layer_group_size" in config

    def step_predictions(self, series: Tensor, observed: Tensor) -> QuantileStepPredictions:
        return quantile_step_predictions(self.model, series, observed)

    @classmethod
    def check_decode_block_size(cls, config: Mapping[str, Any], decode_block_size: int | None) -> None:
        check_block_size(decode_block_size, Toto2Config.from_dict(config).patch_size)

    @classmethod
    def from_files(
        cls, files: CheckpointFiles, *, device: torch.device, dtype: torch.dtype | None, compile: CompileOptions
    ) -> "Toto2Family":
        return cls(load_toto2(files, device=device, dtype=dtype), compile)

    @property
    def patch_size(self) -> int:
        return self.model.patch_size

    @property
    def max_context(self) -> int:
        return TRAINED_CONTEXT

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.patch_proj.linear1.weight.dtype

    def forecast(
        self,
        series: Tensor,
        observed: Tensor,
        prediction_length: int,
        *,
        num_samples: int,
        samples_per_batch: int,
        future: Tensor | None = None,
        sample_keys: Tensor | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Quantiles ``(batch, variate, prediction_length, 9)`` at :attr:`quantile_levels`
        (the sample arguments are the pipeline's; a quantile model draws none)."""
        if future is not None:
            raise ValueError("future covariates: Toto 2.0 takes none (upstream plans them for a later release)")
        quantiles = self.forecaster.forecast(
            fill_forward(series, observed), observed, prediction_length, self.decode_block_size, progress=progress
        )
        return quantiles.permute(1, 2, 3, 0)

    def compile_bucket(self, context_length: int, prediction_length: int) -> int:
        return self.forecaster.plan(context_length, prediction_length, self.decode_block_size).slots

    def unload(self) -> None:
        self.forecaster.clear_buffers()
        self.model.to("meta")
        gc.collect()

    def save_pretrained(self, directory: str | os.PathLike) -> list:
        return save_pretrained(self.model, directory)

    def fine_tuned(self, inputs: Any, options: Any, validation_inputs: Any) -> tuple["Toto2Family", Any]:
        """A copy trained with the pinball loss over the knots (:mod:`toto.training.quantile_loss`)."""
        from ..training import TrainingDiverged, fit_backbone

        model = copy.deepcopy(self.model)
        try:
            history = fit_backbone(model, inputs, options, validation_inputs, quantile_model=True)
        except TrainingDiverged as err:
            err.model = model.eval()
            raise
        return type(self)(model, self.compile_options, self.decode_block_size), history
