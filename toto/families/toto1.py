"""Toto 1.0 (Toto-Open-Base-1.0 and relatives) as a :class:`~toto.families.base.ModelFamily`:
:class:`~toto.model.toto.Toto` forecast by :class:`~toto.inference.forecaster.TotoForecaster`."""

from __future__ import annotations

import copy
import gc
import os
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ..checkpoints.reading import CheckpointFiles, read_checkpoint
from ..compile.policy import CompileOptions
from ..data.util.dataset import masked_timeseries
from ..inference.forecaster import TotoForecaster
from ..inference.likelihood import StepPredictions, step_predictions
from ..model.toto import Toto
from .base import ForecasterBacked, ModelFamily

# Toto-Open-Base-1.0 was trained on contexts of up to 4,096 steps (its model card). Longer
# contexts are not cut: upstream does not cut them either.
TRAINED_CONTEXT = 4096
# The model reads no time stamps; upstream's data structure still carries an interval.
TIME_INTERVAL_SECONDS = 900


class Toto1Family(ForecasterBacked, ModelFamily):
    name = "Toto 1.0"
    output = "samples"

    def __init__(self, model: Toto, compile: CompileOptions = CompileOptions()):
        self.model = model.eval()
        self.compile_options = compile
        self.forecaster = TotoForecaster(model.model, **compile.keywords())

    @classmethod
    def accepts(cls, config: Mapping[str, Any]) -> bool:
        # Toto 1.0's own key; anything else missing or wrong is TotoConfig's error, naming the key.
        return "embed_dim" in config

    @classmethod
    def from_files(
        cls, files: CheckpointFiles, *, device: torch.device, dtype: torch.dtype | None, compile: CompileOptions
    ) -> "Toto1Family":
        model = Toto.from_state(*read_checkpoint(files), str(files.weights), device=device, dtype=dtype)
        return cls(model, compile)

    @property
    def patch_size(self) -> int:
        return self.model.config.patch_size

    @property
    def max_context(self) -> int:
        return TRAINED_CONTEXT

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

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
        inputs = masked_timeseries(series, observed, TIME_INTERVAL_SECONDS)
        if future is not None:
            inputs = inputs._replace(num_exogenous_variables=future.shape[1])
        forecast = self.forecaster.forecast(
            inputs,
            prediction_length,
            num_samples,
            samples_per_batch,
            future_exogenous_variables=future,
            progress=progress,
            hide_leading_padding=True,
            sample_keys=sample_keys,
        )
        return forecast.samples

    @property
    def last_samples_per_batch(self) -> int | None:
        return self.forecaster.last_samples_per_batch

    def compile_bucket(self, context_length: int, prediction_length: int) -> int:
        return self.forecaster.capacity_for(context_length, prediction_length)

    def unload(self) -> None:
        self.forecaster.clear_buffers()
        self.model.to("meta")
        gc.collect()

    def save_pretrained(self, directory: str | os.PathLike) -> list:
        return self.model.save_pretrained(directory)

    def step_predictions(self, series: Tensor, observed: Tensor) -> StepPredictions:
        return step_predictions(self.model.model, series, observed)

    def fine_tuned(self, inputs: Any, options: Any, validation_inputs: Any) -> tuple["Toto1Family", Any]:
        from ..training import TrainingDiverged, fit_backbone

        model = copy.deepcopy(self.model)
        try:
            history = fit_backbone(model.model, inputs, options, validation_inputs)
        except TrainingDiverged as err:
            err.model = model.eval()
            raise
        return type(self)(model, self.compile_options), history
