"""The pipeline's monitoring methods: exact log-likelihoods and anomaly scores of observed series."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..arguments import as_float_tensor, check_int
from ..inference.inputs import mask_missing
from ..inference.stream import LiveStream
from .batching import _autocast
from .inputs import normalize_context

DEFAULT_FALSE_ALARM_RATE = 0.001


@dataclass(frozen=True)
class AnomalyScores:
    """Per-step scores of one series, each ``[variate, time]`` (NaN where a step has no
    prediction: the first patch and missing values).

    ``nll``: negative log density of the observed value (data units) under the model's
    prediction from everything before its patch. ``tail_probability``: two-sided
    ``2 min(F(x), 1 - F(x))`` under the predictive mixture's CDF ``F``; for a calibrated
    model it is uniform on normal steps, so ``anomaly = tail_probability < false_alarm_rate``
    flags that share of them.
    """

    nll: np.ndarray
    tail_probability: np.ndarray
    anomaly: np.ndarray
    false_alarm_rate: float


class MonitoringMethods:
    """Mixed into :class:`~toto.pipeline.TotoPipeline` (which provides ``family`` and ``amp_dtype``)."""

    family: Any
    amp_dtype: torch.dtype | None

    @torch.no_grad()
    def log_likelihood(self, series: Any, *, batch_size: int | None = None) -> list[np.ndarray]:
        """Each step's log density (in the data's units) under the model's prediction from
        everything before its patch: one ``[variate, time]`` float32 array per series, NaN for
        the first patch and for missing values (NaN in the input).

        One teacher-forced pass per batch, as upstream scores its training loss. ``series``:
        as :meth:`predict` reads a context (1-D: one series; 2-D: a batch of univariate
        series; 3-D: ``[batch, variate, time]``), or a list of series, each 1-D or ``[variate,
        time]``, that may differ in length (each is scored alone). Series of one shape run
        ``batch_size`` at a time (default: all at once). A :class:`~toto.inference.stream.LiveStream`
        of this pipeline scores the window it holds (:attr:`~toto.inference.stream.LiveStream.context`).
        Toto 1.0 only: Toto 2.0 has no density.
        """
        if self.family.output != "samples":
            raise ValueError(f"{self.family.name} forecasts quantiles; it has no density (log-likelihoods are for "
                             "Toto 1.0; detect_anomalies scores it approximately)")  # fmt: skip
        return self._per_series(series, batch_size, lambda p: p.log_density())

    @torch.no_grad()
    def detect_anomalies(
        self, series: Any, *, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, batch_size: int | None = None
    ) -> list[AnomalyScores]:
        """:class:`AnomalyScores` per series (inputs as :meth:`log_likelihood`, a stream included): the negative
        log-likelihood, the two-sided tail probability under the predictive mixture, and a
        flag where it is below ``false_alarm_rate``. Needs scipy (``toto-compiled[monitoring]``).

        A quantile model (Toto 2.0) has no density: ``nll`` is NaN, and the tail probability
        comes from its knots with exponential tails beyond them
        (:mod:`toto.inference.quantile_scores`), an approximation past the 0.1 and 0.9 knots."""
        rate = _checked_rate(false_alarm_rate)
        both = self._per_series(series, batch_size, lambda p: torch.stack((p.nll(), p.tail_probability())))
        return [AnomalyScores(nll, tail, np.nan_to_num(tail, nan=1.0) < rate, rate) for nll, tail in both]

    @torch.no_grad()
    def detect_anomalies_df(
        self,
        df: Any,
        *,
        id_column: str = "item_id",
        timestamp_column: str = "timestamp",
        target: str | Sequence[str] = "target",
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
        batch_size: int | None = None,
    ) -> Any:
        """:meth:`detect_anomalies` on every item of a long frame, read as :meth:`predict_df` reads
        it (each item on its regular grid; a missing row or NaN is missing; several ``target``
        columns form one multivariate series). Returns a long frame: id, timestamp,
        ``target_name``, ``value``, ``nll``, ``tail_probability`` and ``anomaly``. Needs the
        extras ``toto-compiled[pandas,monitoring]``."""
        from ..frames.anomalies import anomaly_frame
        from ..frames.panel import read_panel

        rate = _checked_rate(false_alarm_rate)
        panel = read_panel(df, id_column=id_column, timestamp_column=timestamp_column, target=target,
                           prediction_length=1)  # fmt: skip
        scores = self.detect_anomalies([item.values.astype(np.float32) for item in panel.items],
                                       false_alarm_rate=rate, batch_size=batch_size)  # fmt: skip
        return anomaly_frame(panel, [(s.nll, s.tail_probability, s.anomaly) for s in scores])

    def stream(
        self, context: Any, *, max_context: int | None = None, keep: int | None = None, max_horizon: int = 1024
    ) -> LiveStream:
        """A :class:`~toto.inference.stream.LiveStream` of ``context`` (read as :meth:`predict`
        reads it): ``append`` new steps, then ``forecast`` as a fresh call on the whole context
        would, at the cost of one cached step per new patch. ``max_context`` (default: the
        model's, 4,096 steps) bounds the window it holds; past it, the window is cut to its last
        ``keep`` steps (default: three quarters of ``max_context``) and encoded once.
        ``max_horizon``: Toto 2.0 only, the longest forecast its buffers hold room for."""
        from .. import __version__

        max_context = self.family.max_context if max_context is None else max_context
        check_int("max_context", max_context)
        keep = max_context - max_context // 4 if keep is None else keep
        check_int("keep", keep)
        series, _ = normalize_context(context)
        engine = self._stream_engine({"decode_block_size": getattr(self.family, "decode_block_size", None),
                                      "max_horizon": max_horizon})  # fmt: skip
        return LiveStream(engine, series, max_context=max_context, keep=keep, version=__version__)

    def stream_from_state(self, state: dict) -> LiveStream:
        """Resume a stream from its :meth:`~toto.inference.stream.LiveStream.state_dict` (after a
        restart, say); a state of another model or package version is refused, naming both."""
        from .. import __version__

        options = state.get("engine", {}) if isinstance(state, dict) else {}
        return LiveStream.from_state(self._stream_engine(options), state, __version__)

    def _stream_engine(self, options: dict) -> Any:
        from ..inference.stream_engines import Toto1Engine, Toto2Engine

        if self.family.output == "samples":
            return Toto1Engine(self.family.forecaster, self.amp_dtype)
        return Toto2Engine(self.family.forecaster, options.get("decode_block_size"), options.get("max_horizon", 1024),
                           self.amp_dtype)  # fmt: skip

    def _per_series(self, series: Any, batch_size: int | None, score: Callable[[Any], Tensor]) -> list[np.ndarray]:
        """``score`` of the family's step predictions (:class:`~toto.inference.likelihood.StepPredictions`),
        one array per series in input order; series of one shape are batched."""
        if batch_size is not None:
            check_int("batch_size", batch_size)
        if isinstance(series, LiveStream):
            series = series.window_for(self.family.forecaster)
        items = _series_list(series)
        results: list[np.ndarray] = [np.empty(0)] * len(items)
        by_shape: dict[tuple, list[int]] = {}
        for index, item in enumerate(items):
            by_shape.setdefault(tuple(item.shape), []).append(index)
        device = self.family.device
        for indices in by_shape.values():
            size = batch_size or len(indices)
            for chosen in (indices[i : i + size] for i in range(0, len(indices), size)):
                stacked = torch.stack([items[i] for i in chosen])
                values, observed = mask_missing(stacked, ~torch.isnan(stacked))
                with _autocast(device, self.amp_dtype):
                    predictions = self.family.step_predictions(values.to(device), observed.to(device))
                scores = score(predictions).float().cpu().numpy()
                for row, index in enumerate(chosen):
                    results[index] = scores[row] if scores.ndim == 3 else scores[:, row]
        return results


def _series_list(series: Any) -> list[Tensor]:
    """Each series as a float32 ``[variate, time]`` tensor (NaN: missing). A list holds series
    (1-D, or ``[variate, time]``); anything else is read as :meth:`predict` reads its context."""
    if isinstance(series, (list, tuple)) and series and not _is_number(series[0]):
        items = [as_float_tensor(item, f"series[{i}]") for i, item in enumerate(series)]
        for i, item in enumerate(items):
            if item.ndim not in (1, 2):
                raise ValueError(f"series[{i}] must be 1-D or [variate, time], got shape {tuple(item.shape)}")
        return [normalize_context(item.reshape(1, -1, item.shape[-1]))[0][0] for item in items]
    values, _ = normalize_context(series)
    return list(values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number))


def _checked_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
        raise ValueError(f"false_alarm_rate must be a number in (0, 1), got {rate!r}")
    return float(rate)
