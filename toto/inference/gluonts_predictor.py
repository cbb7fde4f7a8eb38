"""GluonTS adapter: :class:`TotoPredictor` forecasts GluonTS datasets with :class:`TotoForecaster`,
with upstream's constructor, ``create_for_eval`` and ``predict`` (differences, all invisible
to the model: docs/ARCHITECTURE.md). Needs ``pip install "toto-compiled[gluonts]"``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

try:
    import pandas as pd
    from gluonts.dataset.common import Dataset
    from gluonts.dataset.field_names import FieldName
    from gluonts.dataset.loader import DataLoader, InferenceDataLoader
    from gluonts.model.forecast import Forecast as GluonTSForecast
    from gluonts.model.forecast import SampleForecast
    from gluonts.model.forecast_generator import OutputTransform, SampleForecastGenerator
    from gluonts.torch.batchify import batchify
    from gluonts.torch.model.predictor import PyTorchPredictor
    from gluonts.transform import AddObservedValuesIndicator, InstanceSplitter, TestSplitSampler, Transformation
except ImportError as err:
    raise ImportError(
        f"toto.inference.gluonts_predictor needs gluonts and pandas ({err}); "
        'install them with: pip install "toto-compiled[gluonts]"'
    ) from err

from ..data.util.dataset import MaskedTimeseries
from ..model.backbone import TotoBackbone
from ..model.toto import Toto
from ..arguments import check_int
from .forecaster import Forecast, TotoForecaster

__all__ = ["Multivariate", "TotoPredictor", "TotoSampleForecast", "TotoSampleForecastGenerator"]

Batch = dict[str, Any]


@dataclass(frozen=True)
class Multivariate:
    """Batching mode: ``batch_size`` dataset items, each with all its variates, per forecast call."""

    code: ClassVar[str] = "M"
    batch_size: int = 16

    def __post_init__(self) -> None:
        check_int("Multivariate.batch_size", self.batch_size)


class TotoSampleForecast(SampleForecast):
    """A :class:`SampleForecast` whose ``mean`` is the model's own mean, not the average of the samples.

    ``samples`` is ``(num_samples, horizon)`` or ``(num_samples, horizon, variate)``;
    ``mean`` is the same without the first axis. Forecasting without samples gives the
    mean path as the only sample.
    """

    def __init__(
        self,
        samples: np.ndarray,
        mean: np.ndarray,
        start_date: pd.Period,
        item_id: str | None = None,
        info: dict | None = None,
    ) -> None:
        super().__init__(samples, start_date, item_id, info)
        if np.shape(mean) != np.shape(samples)[1:]:
            expected = np.shape(samples)[1:]
            raise ValueError(f"mean must have shape {expected} (samples without the first axis), got {np.shape(mean)}")
        self._mean = mean


def context_timestamps(forecast_start: pd.Period, length: int) -> np.ndarray:
    """Unix seconds at the start of each of the ``length`` periods just before ``forecast_start``."""
    periods = pd.period_range(end=forecast_start - 1, periods=length, freq=forecast_start.freq)
    return periods.to_timestamp().to_numpy().astype("datetime64[s]").astype(np.int64)


def period_seconds(period: pd.Period) -> int:
    """Length of ``period`` in seconds: exact for fixed frequencies, this period's own for calendar ones (months...)."""
    return int(((period + 1).start_time - period.start_time).total_seconds())


def masked_inputs(batch: Batch) -> MaskedTimeseries:
    """The ``[batch, variate, time]`` model input of a stacked GluonTS batch.

    ``past_target`` is ``[batch, time]`` or ``[batch, time, variate]``; ``past_is_pad``
    (``[batch, time]``) marks left padding, unobserved in every variate. Each item is
    one id group: its variates attend to each other.
    """
    target = torch.as_tensor(batch["past_target"])
    if target.ndim not in (2, 3):
        raise ValueError(f"past_target must be [batch, time] or [batch, time, variate], got shape {tuple(target.shape)}")
    series = target[:, None, :] if target.ndim == 2 else target.transpose(1, 2)
    batch_size, variates, length = series.shape
    shape = (batch_size, variates, length)
    if "past_is_pad" in batch:
        observed = ~torch.as_tensor(batch["past_is_pad"], device=series.device).bool()
        padding_mask = observed[:, None, :].expand(shape)
    else:
        padding_mask = torch.ones(shape, dtype=torch.bool, device=series.device)
    starts = batch["forecast_start"]
    timestamps = torch.as_tensor(np.stack([context_timestamps(start, length) for start in starts]))
    intervals = torch.tensor([period_seconds(start) for start in starts], dtype=torch.int64)
    return MaskedTimeseries(
        series=series,
        padding_mask=padding_mask,
        id_mask=torch.zeros(shape, dtype=torch.int, device=series.device),
        timestamp_seconds=timestamps[:, None, :].expand(shape),
        time_interval_seconds=intervals[:, None].expand(batch_size, variates),
    )


def gluonts_arrays(forecast: Forecast, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(samples, mean)`` in GluonTS layout: ``[batch, sample, horizon(, variate)]`` and ``[batch, horizon(, variate)]``.

    The variate axis is dropped for single-variate series, as GluonTS expects of univariate targets.
    """
    mean = forecast.mean.transpose(1, 2)
    samples = mean[:, None] if forecast.samples is None else forecast.samples.permute(0, 3, 2, 1)
    if mean.shape[-1] == 1:
        mean, samples = mean[..., 0], samples[..., 0]
    return samples.to(dtype).cpu().numpy(), mean.to(dtype).cpu().numpy()


def backbone_of(prediction_net: torch.nn.Module) -> TotoBackbone:
    """The :class:`TotoBackbone` of a :class:`Toto` (or the backbone itself)."""
    if isinstance(prediction_net, TotoBackbone):
        return prediction_net
    if isinstance(getattr(prediction_net, "model", None), TotoBackbone):
        return prediction_net.model
    raise TypeError(
        f"prediction_net must be this package's Toto (or its TotoBackbone), got {type(prediction_net).__name__}"
    )


def check_forecaster_options(options: dict[str, Any]) -> None:
    """Reject options :class:`TotoForecaster` does not take now, rather than at the first ``predict``."""
    accepted = set(inspect.signature(TotoForecaster.__init__).parameters) - {"self", "model"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(f"unknown TotoForecaster option(s) {unknown}; accepted: {sorted(accepted)}")


def consecutive_runs(data: Sequence[Batch]) -> list[list[Batch]]:
    """Split ``data`` into maximal runs of items whose ``past_target`` shapes agree, keeping order."""
    runs: list[list[Batch]] = []
    previous = object()
    for item in data:
        shape = np.shape(item["past_target"]) if "past_target" in item else None
        if shape != previous:
            runs.append([])
            previous = shape
        runs[-1].append(item)
    return runs


class TotoSampleForecastGenerator(SampleForecastGenerator):
    """Turns GluonTS batches into :class:`TotoSampleForecast` s, any horizon, through one reused :class:`TotoForecaster`.

    Give a ready ``forecaster``, or :class:`TotoForecaster` keyword options
    (``torch_compile``, ``compile_mode``, ...) for the one built on first use.
    """

    def __init__(self, forecaster: TotoForecaster | None = None, **forecaster_options: Any) -> None:
        super().__init__()
        if forecaster is not None and not isinstance(forecaster, TotoForecaster):
            raise TypeError(f"forecaster must be a TotoForecaster, got {type(forecaster).__name__}")
        if forecaster is not None and forecaster_options:
            raise TypeError(f"pass a forecaster or TotoForecaster options, not both (got {sorted(forecaster_options)})")
        check_forecaster_options(forecaster_options)
        self.forecaster = forecaster
        self.forecaster_options = forecaster_options
        self._built: tuple[TotoBackbone, torch.device, TotoForecaster] | None = None

    def forecaster_for(self, backbone: TotoBackbone) -> TotoForecaster:
        """The forecaster for ``backbone``, built once per backbone and device (compile settings depend on it)."""
        if self.forecaster is not None:
            if self.forecaster.model is not backbone:
                raise ValueError("forecaster was built on a different model than prediction_net")
            return self.forecaster
        if self._built is None or self._built[0] is not backbone or self._built[1] != backbone.device:
            self._built = (backbone, backbone.device, TotoForecaster(backbone, **self.forecaster_options))
        return self._built[2]

    def __call__(
        self,
        inference_data_loader: DataLoader,
        prediction_net: torch.nn.Module,
        prediction_length: int,
        num_samples: int | None,
        input_names: list[str],
        output_transform: OutputTransform | None,
        mode: Multivariate = Multivariate(batch_size=4),
        samples_per_batch: int = 10,
        use_kv_cache: bool = True,
    ) -> Iterator[TotoSampleForecast]:
        """Forecast every batch of ``inference_data_loader``; ``mode`` is accepted for upstream's signature.

        A loaded element is a stacked batch, or a list of them (what ``TotoPredictor.predict`` loads).
        """
        forecaster = self.forecaster_for(backbone_of(prediction_net))
        for loaded in inference_data_loader:
            for batch in loaded if isinstance(loaded, list) else [loaded]:
                yield from self._forecast_batch(
                    batch, forecaster, prediction_length, num_samples, output_transform, samples_per_batch, use_kv_cache
                )

    def _forecast_batch(
        self,
        batch: Batch,
        forecaster: TotoForecaster,
        prediction_length: int,
        num_samples: int | None,
        output_transform: OutputTransform | None,
        samples_per_batch: int,
        use_kv_cache: bool,
    ) -> Iterator[TotoSampleForecast]:
        forecast = forecaster.forecast(
            masked_inputs(batch),
            prediction_length=prediction_length,
            num_samples=num_samples,
            samples_per_batch=samples_per_batch,
            use_kv_cache=use_kv_cache,
        )
        target = torch.as_tensor(batch["past_target"])
        samples, mean = gluonts_arrays(forecast, target.dtype if target.is_floating_point() else torch.float32)
        if output_transform is not None:
            samples, mean = output_transform(batch, samples), output_transform(batch, mean)
        starts = batch["forecast_start"]
        item_ids = batch.get("item_id", [None] * len(starts))
        for index, start in enumerate(starts):
            yield TotoSampleForecast(samples[index], mean[index], start_date=start, item_id=item_ids[index], info=None)


class TotoPredictor(PyTorchPredictor):
    """A GluonTS predictor for :class:`Toto`: ``predict(dataset)`` yields one :class:`TotoSampleForecast` per series.

    ``mode.batch_size`` items are forecast per call, ``samples_per_batch`` sample
    paths at a time. Usually built with :meth:`create_for_eval`.
    """

    def __init__(
        self,
        input_names: list[str],
        prediction_net: torch.nn.Module,
        prediction_length: int,
        input_transform: Transformation,
        forecast_generator: TotoSampleForecastGenerator,
        output_transform: OutputTransform | None = None,
        lead_time: int = 0,
        device: str | torch.device = "auto",
        mode: Multivariate = Multivariate(batch_size=16),
        samples_per_batch: int = 10,
    ) -> None:
        check_int("prediction_length", prediction_length)
        check_int("lead_time", lead_time, minimum=0)
        check_int("samples_per_batch", samples_per_batch)
        if not isinstance(mode, Multivariate):
            raise TypeError(f"mode must be a Multivariate, got {type(mode).__name__}")
        if not isinstance(forecast_generator, TotoSampleForecastGenerator):
            raise TypeError(
                f"forecast_generator must be a TotoSampleForecastGenerator, got {type(forecast_generator).__name__}"
            )
        backbone_of(prediction_net)  # fail now on a foreign model, not at the first predict
        super().__init__(
            batch_size=mode.batch_size,
            input_names=input_names,
            prediction_net=prediction_net,
            prediction_length=prediction_length,
            input_transform=input_transform,
            forecast_generator=forecast_generator,
            output_transform=output_transform,
            lead_time=lead_time,
            device=device,
        )
        self.mode = mode
        self.samples_per_batch = samples_per_batch

    @classmethod
    def create_for_eval(
        cls,
        model: Toto,
        prediction_length: int,
        context_length: int,
        mode: Multivariate = Multivariate(batch_size=1),
        samples_per_batch: int = 10,
        *,
        forecaster: TotoForecaster | None = None,
        **forecaster_options: Any,
    ) -> "TotoPredictor":
        """A predictor that forecasts ``prediction_length`` steps after the last ``context_length`` steps of each series.

        ``forecaster`` (built on ``model.model``) or ``forecaster_options`` such as
        ``torch_compile=True`` choose the :class:`TotoForecaster` used.
        """
        if not isinstance(model, Toto):
            raise TypeError(f"model must be a toto Toto, got {type(model).__name__}")
        check_int("prediction_length", prediction_length)
        check_int("context_length", context_length)
        if isinstance(forecaster, TotoForecaster) and forecaster.model is not model.model:
            raise ValueError("forecaster was built on a different model than model (pass TotoForecaster(model.model))")
        input_transform = AddObservedValuesIndicator(
            target_field=FieldName.TARGET, output_field=FieldName.OBSERVED_VALUES
        ) + InstanceSplitter(
            target_field=FieldName.TARGET,
            is_pad_field=FieldName.IS_PAD,
            start_field=FieldName.START,
            forecast_start_field=FieldName.FORECAST_START,
            instance_sampler=TestSplitSampler(),
            past_length=context_length,
            future_length=prediction_length,
            time_series_fields=[FieldName.OBSERVED_VALUES],
        )
        return cls(
            input_names=["past_target"],
            prediction_net=model,
            prediction_length=prediction_length,
            input_transform=input_transform,
            forecast_generator=TotoSampleForecastGenerator(forecaster, **forecaster_options),
            device=model.device,
            mode=mode,
            samples_per_batch=samples_per_batch,
        )

    def custom_stack_fn(self, data: list[Batch], device: torch.types.Device = None) -> Batch:
        """Stack ``data`` with GluonTS's ``batchify``; float arrays of unequal shapes are zero-padded at the end.

        As in ``batchify``, tensors, strings and periods stay lists. When padding is
        needed, numbers become tensors and non-float arrays stay lists.
        """
        device = device or self.device
        try:
            return batchify(data, device=device)
        except (ValueError, TypeError):
            if not has_ragged_arrays(data):
                raise
        return {key: stack_padded([item[key] for item in data], key, device) for key in data[0]}

    def predict(
        self,
        dataset: Dataset,
        num_samples: int | None = None,
        use_kv_cache: bool = True,
        eval: bool = True,
    ) -> Iterator[GluonTSForecast]:
        """Forecasts of ``dataset``, in order: ``num_samples`` sample paths each, or (``None``) the mean path.

        ``eval=False`` leaves the model's training mode alone (upstream's switch).
        """
        if num_samples is not None:
            check_int("num_samples", num_samples)
        loader = InferenceDataLoader(
            dataset, transform=self.input_transform, batch_size=self.batch_size, stack_fn=self._stack_runs
        )
        if eval:
            self.prediction_net.eval()
        return self.forecast_generator(
            inference_data_loader=loader,
            prediction_net=self.prediction_net,
            prediction_length=self.prediction_length,
            num_samples=num_samples,
            input_names=self.input_names,
            output_transform=self.output_transform,
            mode=self.mode,
            samples_per_batch=self.samples_per_batch,
            use_kv_cache=use_kv_cache,
        )

    def _stack_runs(self, data: list[Batch]) -> list[Batch]:
        # Items of different shapes are stacked (and forecast) separately: padding them to
        # one shape would add zero variates that the real ones attend to.
        return [self.custom_stack_fn(run) for run in consecutive_runs(data)]


def has_ragged_arrays(data: Sequence[Batch]) -> bool:
    """Whether some field holds numpy arrays of different shapes across ``data``."""
    for key in data[0]:
        values = [item[key] for item in data]
        if isinstance(values[0], np.ndarray) and len({np.shape(v) for v in values}) > 1:
            return True
    return False


def stack_padded(values: list[Any], key: str, device: torch.types.Device) -> Tensor | list[Any]:
    """One field of a batch: float arrays zero-padded at the end of each axis to a common shape and stacked."""
    first = values[0]
    if isinstance(first, Tensor):
        return torch.stack([v.to(device) for v in values])
    if isinstance(first, np.ndarray) and np.issubdtype(first.dtype, np.floating):
        if len({v.ndim for v in values}) > 1:
            raise ValueError(f"field {key!r}: arrays with different numbers of axes cannot be batched together")
        target = np.max([v.shape for v in values], axis=0)
        padded = [np.pad(v, [(0, t - s) for s, t in zip(v.shape, target)]) for v in values]
        return torch.as_tensor(np.stack(padded), device=device)
    if isinstance(first, (int, float, np.number)):
        return torch.tensor(values, device=device)
    return values
