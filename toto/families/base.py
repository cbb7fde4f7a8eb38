"""The interface between a model family and everything above it (pipeline, frames, evaluation,
engines, training entry points, commands): load from ``config.json`` + weights, forecast a
padded batch, and report patch size, maximum context and what the family outputs."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Literal, Mapping

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..checkpoints.reading import CheckpointFiles
from ..compile.policy import CompileOptions, CompileSettings


class ModelFamily(ABC):
    """A loaded model of one family with its (compiled) forecaster."""

    name: ClassVar[str]  # as errors and metadata name it, e.g. "Toto 1.0"
    output: ClassVar[Literal["samples", "quantiles"]]
    # A quantile family's knots: the last dimension of what :meth:`forecast` returns.
    quantile_levels: ClassVar[tuple[float, ...]] = ()

    @classmethod
    @abstractmethod
    def accepts(cls, config: Mapping[str, Any]) -> bool:
        """Whether a parsed ``config.json`` describes a model of this family."""

    @classmethod
    def check_decode_block_size(cls, config: Mapping[str, Any], decode_block_size: int | None) -> None:
        """Whether ``decode_block_size`` suits a model of this family with the parsed ``config``
        (before loading it, as the Ray engine's driver does): a ValueError naming it if not."""
        raise ValueError(f"decode_block_size: {cls.name} decodes one patch at a time")

    @classmethod
    @abstractmethod
    def from_files(
        cls, files: CheckpointFiles, *, device: torch.device, dtype: torch.dtype | None, compile: CompileOptions
    ) -> "ModelFamily":
        """Load the checkpoint ``files`` onto ``device`` (``dtype``: None keeps the file's)."""

    @property
    @abstractmethod
    def patch_size(self) -> int: ...

    @property
    @abstractmethod
    def max_context(self) -> int:
        """The longest context the published weights were trained on, in time steps."""

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The weights' dtype."""

    @property
    @abstractmethod
    def compile_settings(self) -> CompileSettings: ...

    @property
    @abstractmethod
    def compiled(self) -> bool:
        """Whether forecasting runs compiled (False when not requested or after a compile failure)."""

    @property
    @abstractmethod
    def compile_error(self) -> str | None: ...

    @abstractmethod
    def forecast(
        self,
        series: Float[Tensor, "batch variate time"],
        observed: Bool[Tensor, "batch variate time"],
        prediction_length: int,
        *,
        num_samples: int,
        samples_per_batch: int,
        future: Float[Tensor, "batch exogenous horizon"] | None = None,
        sample_keys: Int[Tensor, " batch"] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Float[Tensor, "batch variate horizon samples"]:
        """Forecast a left-padded batch (``observed`` False on padding and missing values);
        ``future``: the known future of the last variates. The last dimension holds sample
        paths (``output == "samples"``) or the quantiles at :attr:`quantile_levels`."""

    @property
    def last_samples_per_batch(self) -> int | None:
        """Sample rows per series that the last call decoded at once, if the family shrank the
        request to fit in memory; None means as requested."""
        return None

    @abstractmethod
    def compile_bucket(self, context_length: int, prediction_length: int) -> int:
        """Which compiled graphs a call of these lengths uses (calls in one bucket share them)."""

    @abstractmethod
    def clear_buffers(self) -> None:
        """Free memory kept for reuse between calls."""

    @abstractmethod
    def unload(self) -> None:
        """Free the weights (the object is unusable afterwards)."""

    @abstractmethod
    def save_pretrained(self, directory: str | os.PathLike) -> list:
        """Write ``config.json`` + ``model.safetensors`` that :meth:`from_files` loads."""

    def step_predictions(self, series: Tensor, observed: Tensor) -> Any:
        """Each step's prediction from everything before its patch, teacher-forced: a mixture
        (:class:`toto.inference.likelihood.StepPredictions`) or knots
        (:class:`toto.inference.quantile_scores.QuantileStepPredictions`), with ``nll()`` and
        ``tail_probability()``. A family without them cannot score anomalies."""
        raise ValueError(f"{self.name} gives no per-step predictions: it cannot score anomalies")

    def fine_tuned(self, inputs: Any, options: Any, validation_inputs: Any) -> tuple["ModelFamily", Any]:
        """A fine-tuned copy and its history (:class:`toto.training.FitOptions` ``options``)."""
        raise NotImplementedError(f"fine-tuning is not available for {self.name} models")


class ForecasterBacked:
    """Compile status and buffers of a family that forecasts through ``self.forecaster``
    (mixed in before :class:`ModelFamily`)."""

    forecaster: Any

    @property
    def compile_settings(self) -> CompileSettings:
        return self.forecaster.compile_settings

    @property
    def compiled(self) -> bool:
        return self.forecaster.compiled

    @property
    def compile_error(self) -> str | None:
        return self.forecaster.compile_error

    def clear_buffers(self) -> None:
        self.forecaster.clear_buffers()
