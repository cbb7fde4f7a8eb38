"""``TotoPipeline``: a Chronos-style entry point for forecasts, data frames and fine-tuning,
on top of one :class:`~toto.families.base.ModelFamily` (chosen from ``config.json``)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..arguments import check_int
from ..checkpoints.reading import DEFAULT_MODEL_ID
from ..compile.policy import CompileOptions, CompileSettings
from ..families import ModelFamily, load_family, wrap_model
from ..frames.options import DEFAULT_FRAME_BATCH_SIZE, DEFAULT_FRAME_SAMPLES, DEFAULT_QUANTILES, FrameOptions
from ..model.toto import Toto
from ..toto2.model import Toto2Model
from .batching import BackOff, SampleRequest, forecast_in_batches, item_keys, quantile_summary
from .forecasts import QuantileForecast, TotoForecast, interpolate_knots
from .inputs import covariates_tensor, keys_tensor, normalize_context
from .monitoring import AnomalyScores, MonitoringMethods

if TYPE_CHECKING:
    from ..frames.panel import Panel

__all__ = [
    "DEFAULT_FRAME_BATCH_SIZE", "DEFAULT_QUANTILES", "AnomalyScores", "QuantileForecast", "TotoForecast", "TotoPipeline",
]

HUB_OPTIONS = frozenset({"revision", "cache_dir", "local_files_only", "token", "force_download"})
IGNORED_PREDICT_OPTIONS = frozenset({"temperature", "top_k", "top_p"})  # accepted by the old wrapper
DEFAULT_QUANTILE_SAMPLES = DEFAULT_FRAME_SAMPLES  # predict_quantiles: enough for the 0.1 .. 0.9 levels
_warned_ignored: set[str] = set()
logger = logging.getLogger("toto")


class TotoPipeline(MonitoringMethods):
    def __init__(
        self,
        model: Toto | Toto2Model | ModelFamily,
        *,
        torch_compile: bool | None = None,
        compile_mode: str | None = None,
        compile_backend: str | None = None,
        compile_prefill: bool | None = None,
        compile_cache_dir: str | os.PathLike | None = None,
        amp_dtype: torch.dtype | None = None,
        max_oom_retries: int = 2,
        min_samples_per_batch: int = 32,
        min_num_samples: int = 256,
    ):
        """``model``: a loaded :class:`Toto` or :class:`~toto.toto2.model.Toto2Model` (compiled as the
        keywords say), or a loaded :class:`~toto.families.base.ModelFamily` (which holds its own
        compile settings)."""
        if amp_dtype not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"amp_dtype must be torch.float16, torch.bfloat16 or None, got {amp_dtype!r}")
        self.back_off = BackOff(max_oom_retries, min_samples_per_batch, min_num_samples)
        compile = CompileOptions(torch_compile, compile_mode, compile_backend, compile_prefill, compile_cache_dir)
        if isinstance(model, ModelFamily):
            if compile != CompileOptions():
                raise TypeError("TotoPipeline: a loaded ModelFamily holds its compile settings; pass none here")
            self.family = model
        else:
            self.family = wrap_model(model, compile)
        self.amp_dtype = amp_dtype
        self.last_run_metadata: dict[str, Any] = {}
        self.fit_history: Any = None  # a FitHistory on pipelines returned by fit
        # One predict at a time: the family's buffers, the seeded RNG and the metadata are shared.
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = DEFAULT_MODEL_ID,
        device_map: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        *,
        torch_compile: bool | None = None,
        compile_mode: str | None = None,
        compile_backend: str | None = None,
        compile_model: bool | None = None,
        compile_prefill: bool | None = None,
        compile_cache_dir: str | os.PathLike | None = None,
        amp_dtype: torch.dtype | None = None,
        warmup_sequence: int = 0,
        max_oom_retries: int = 2,
        min_samples_per_batch: int = 32,
        min_num_samples: int = 256,
        **hub_kwargs: Any,
    ) -> "TotoPipeline":
        """Load ``model_id`` (hub id or local folder; the model family is read from its
        ``config.json``) onto ``device_map`` (``None``: CUDA when available, else the CPU;
        the choice is logged on the ``toto`` logger and readable as :attr:`device`).

        ``torch_compile=None`` reads ``TOTO_COMPILE``; ``compile_model`` is an alias of
        ``torch_compile``. ``compile_prefill=None`` compiles the whole call on CUDA and
        only the decode steps on CPU. ``compile_cache_dir`` (else ``TOTO_COMPILE_CACHE``)
        keeps compiled graphs across processes. ``torch_dtype=torch.bfloat16`` loads
        the weights in bfloat16; ``amp_dtype`` runs a float32 model under autocast
        (CPU and CUDA). ``hub_kwargs``: revision, cache_dir, local_files_only, token,
        force_download.
        """
        unknown = sorted(set(hub_kwargs) - HUB_OPTIONS)
        if unknown:
            raise TypeError(f"TotoPipeline.from_pretrained got unexpected keyword argument(s) {unknown}")
        if compile_model is not None:
            if torch_compile is not None and bool(torch_compile) != bool(compile_model):
                raise ValueError(f"torch_compile={torch_compile} contradicts its alias compile_model={compile_model}")
            torch_compile = compile_model
        device = _device(device_map)
        check_int("warmup_sequence", warmup_sequence, minimum=0)
        compile = CompileOptions(torch_compile, compile_mode, compile_backend, compile_prefill, compile_cache_dir)
        family = load_family(model_id, device=device, dtype=torch_dtype, compile=compile, **hub_kwargs)
        pipeline = cls(
            family,
            amp_dtype=amp_dtype,
            max_oom_retries=max_oom_retries,
            min_samples_per_batch=min_samples_per_batch,
            min_num_samples=min_num_samples,
        )
        if warmup_sequence:
            samples = {} if family.output == "quantiles" else {"num_samples": 512, "samples_per_batch": 512}
            pipeline.predict(torch.zeros(warmup_sequence), 2 * family.patch_size, **samples)
        return pipeline

    @property
    def model(self) -> Any:
        """The loaded model (a :class:`Toto` for Toto 1.0)."""
        return self.family.model

    @property
    def forecaster(self) -> Any:
        """The family's forecaster (a :class:`~toto.inference.forecaster.TotoForecaster` for Toto 1.0)."""
        return self.family.forecaster

    @property
    def device(self) -> torch.device:
        return self.family.device

    @property
    def compiled(self) -> bool:
        """Whether decoding runs compiled (False when not requested or after a compile failure)."""
        return self.family.compiled

    @property
    def compile_settings(self) -> CompileSettings:
        return self.family.compile_settings

    @property
    def decode_block_size(self) -> int | None:
        """Toto 2.0: steps decoded per block, each block's medians fed back (default 768; None
        or 0: the whole horizon in one block). Settable; Toto 1.0 decodes patch by patch."""
        return self._block_decoding_family().decode_block_size

    @decode_block_size.setter
    def decode_block_size(self, value: int | None) -> None:
        self._block_decoding_family().decode_block_size = value

    def _block_decoding_family(self) -> Any:
        if not hasattr(self.family, "decode_block_size"):
            raise AttributeError(f"decode_block_size: {self.family.name} decodes one patch at a time")
        return self.family

    @property
    def max_oom_retries(self) -> int:
        return self.back_off.max_oom_retries

    @property
    def min_samples_per_batch(self) -> int:
        return self.back_off.min_samples_per_batch

    @property
    def min_num_samples(self) -> int:
        return self.back_off.min_num_samples

    def warmup(
        self,
        context_lengths: Sequence[int] | int,
        prediction_length: int,
        num_samples: int | None = None,
        samples_per_batch: int | None = None,
        *,
        batch_size: int = 1,
        num_variates: int = 1,
        show_progress: bool = True,
    ) -> list[tuple[int, int, float]]:
        """Compile, up front, every capacity bucket that calls with these shapes will touch.

        One ``predict`` on zeros per distinct bucket among ``context_lengths`` (batch of
        ``batch_size`` series of ``num_variates`` variates), so a backtest's first real
        calls pay no compile time. With a compile cache (``compile_cache_dir`` or
        ``TOTO_COMPILE_CACHE``) the graphs are also saved for later processes. Progress
        goes to stderr. Returns ``(context_length, capacity_patches, seconds)`` per bucket.
        ``num_samples`` and ``samples_per_batch``: as :meth:`predict`.
        """
        lengths = [context_lengths] if isinstance(context_lengths, int) else list(context_lengths)
        if not lengths:
            raise ValueError("context_lengths must name at least one context length")
        for i, length in enumerate(lengths):
            check_int(f"context_lengths[{i}]", length)
        check_int("prediction_length", prediction_length)
        check_int("batch_size", batch_size)
        check_int("num_variates", num_variates)
        by_bucket: dict[int, int] = {}
        for length in lengths:
            by_bucket.setdefault(self.family.compile_bucket(length, prediction_length), length)
        report = []
        for index, (capacity, length) in enumerate(sorted(by_bucket.items()), start=1):
            started = time.perf_counter()
            self.predict(torch.zeros(batch_size, num_variates, length), prediction_length, num_samples, samples_per_batch)
            seconds = time.perf_counter() - started
            report.append((length, capacity, seconds))
            if show_progress:
                print(
                    f"toto warmup: bucket {index}/{len(by_bucket)} (context {length}, capacity {capacity} patches) "
                    f"ready in {seconds:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        return report

    def fit(
        self,
        inputs: Any,
        *,
        prediction_length: int,
        context_length: int,
        num_steps: int,
        batch_size: int = 16,
        learning_rate: float = 1e-4,
        validation_inputs: Any = None,
        **options: Any,
    ) -> "TotoPipeline":
        """Fine-tune a copy of this pipeline's model and return a new pipeline with it; this one is unchanged.

        ``inputs``: a list of series, each 1-D or ``(variate, time)``, of any lengths
        (NaN = missing), a dict of them (errors name their keys), or one array
        ``(batch, variate, time)``; :meth:`fit_df` takes a long frame. Training draws windows of
        ``context_length`` (a multiple of the patch size) plus one patch, the model learning
        to predict every next patch (upstream's fine-tuning). ``validation_inputs``: series
        whose last window is scored on its last ``prediction_length`` steps; the returned
        model has the weights of the best validation. Progress goes to stderr.

        ``options``, see :class:`toto.training.FitOptions`: ``min_learning_rate``,
        ``warmup_steps``, ``decay_steps``, ``weight_decay``, ``max_grad_norm``,
        ``trainable`` ("all", "head" or a number of last layers), ``dropout``,
        ``num_exogenous`` (the last variates: read, never scored),
        ``add_exogenous_features`` (train upstream's variate labels), ``validate_every``,
        ``early_stopping_patience``, ``seed``, ``compile``, ``precision``, ``show_progress``.
        The run's :class:`toto.training.FitHistory` is the new pipeline's ``fit_history``.

        A non-finite loss raises :class:`toto.training.TrainingDiverged` naming the step;
        its ``model`` attribute holds the weights from before that step.
        """
        from ..training import FitOptions

        fields = set(FitOptions.__dataclass_fields__) - {"prediction_length", "context_length", "num_steps"}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"TotoPipeline.fit got unexpected keyword argument(s) {unknown}")
        settings = FitOptions(
            prediction_length=prediction_length, context_length=context_length, num_steps=num_steps,
            batch_size=batch_size, learning_rate=learning_rate, **options,
        )  # fmt: skip
        settings.check()  # before copying the model
        family, history = self.family.fine_tuned(inputs, settings, validation_inputs)
        tuned = type(self)(family, amp_dtype=self.amp_dtype, **vars(self.back_off))
        tuned.fit_history = history
        return tuned

    def fit_df(
        self,
        df: Any,
        *,
        prediction_length: int,
        context_length: int,
        num_steps: int,
        id_column: str = "item_id",
        timestamp_column: str = "timestamp",
        target: str | Sequence[str] = "target",
        exogenous: Sequence[str] = (),
        validation_df: Any = None,
        **options: Any,
    ) -> "TotoPipeline":
        """:meth:`fit` on the items of a long frame (one row per item and timestamp), read as
        :meth:`predict_df` reads it: each item on its regular grid, a missing row or NaN missing.

        ``target`` columns are learnt together as one multivariate series per item;
        ``exogenous`` columns are read after them and never scored (``num_exogenous``).
        ``validation_df``: the same columns, each item's last window scored. ``options``: those
        of :meth:`fit`. Needs the extra ``toto-compiled[pandas]``.
        """
        from ..frames.panel import read_panel

        def series(frame: Any) -> dict[Any, np.ndarray]:  # keyed by item id, which errors then name
            panel = read_panel(frame, id_column=id_column, timestamp_column=timestamp_column, target=target,
                               exogenous=exogenous, prediction_length=prediction_length)  # fmt: skip
            return {item.item_id: item.values for item in panel.items}

        validation = None if validation_df is None else series(validation_df)
        return self.fit(
            series(df), prediction_length=prediction_length, context_length=context_length, num_steps=num_steps,
            validation_inputs=validation, num_exogenous=len(tuple(exogenous)), **options,
        )  # fmt: skip

    def save_pretrained(self, directory: str | os.PathLike) -> list:
        """Write the model as ``config.json`` + ``model.safetensors`` for :meth:`from_pretrained`
        (through a temporary folder renamed into place)."""
        return self.family.save_pretrained(directory)

    def unload(self) -> None:
        """Free the model, its decode buffers and compiled graphs' caches."""
        self.family.unload()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def predict(
        self,
        context: Any,
        prediction_length: int,
        num_samples: int | None = None,
        samples_per_batch: int | None = None,
        *,
        time_interval_seconds: int = 900,
        seed: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        future_covariates: Any = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
        sample_keys: Any = None,
        **kwargs: Any,
    ) -> list[TotoForecast] | list[QuantileForecast]:
        """Sample forecasts, one :class:`TotoForecast` per series (``num_samples`` default 4096,
        ``samples_per_batch`` default 512). A quantile model (Toto 2.0) returns one
        :class:`QuantileForecast` per series instead, and refuses the sampling options
        (``num_samples``, ``samples_per_batch``, ``seed``, ``sample_keys``).

        ``future_covariates`` (``(batch, covariates, prediction_length)``, or without the
        batch dimension for one series): the known future of the context's *last*
        ``covariates`` variates, which replaces what the model decodes for them (upstream's
        exogenous variables). The forecasts report them as given.

        Series are forecast ``batch_size`` at a time (default: all at once), longest
        first, each batch cut to its own longest series, so short series are not padded
        to the longest of the whole call. Leading padding is hidden from the model, so each
        series is forecast as it would be alone: its forecast distribution does not depend
        on ``batch_size`` (its draws do, through the random stream). With ``seed``, batch
        ``i`` is seeded with ``seed + i``. ``sample_keys`` (one integer per series, e.g. from
        :func:`toto.inference.keyed_random.series_key`) instead draws each series from its own
        random stream, so its samples do not depend on ``batch_size`` or on the other series
        (beyond the rounding of batched arithmetic); ``seed`` is then unused. ``progress(done,
        total)`` is called after each decoded patch of each sample batch of each batch of
        series. ``show_progress`` draws a tqdm bar over the batches of series on stderr
        (``None``: when stderr is a terminal, tqdm is installed and there are several
        batches). ``time_interval_seconds`` is accepted for upstream's API; the model does not
        read it. ``temperature``, ``top_k`` and ``top_p`` (an older wrapper's) are ignored,
        with a warning the first time.
        """
        _check_predict_options(kwargs)
        check_int("prediction_length", prediction_length)
        if batch_size is not None:
            check_int("batch_size", batch_size)
        series, observed = normalize_context(context)
        future = None if future_covariates is None else covariates_tensor(future_covariates, series, prediction_length)
        keys = None if sample_keys is None else keys_tensor(sample_keys, series.shape[0])
        request = self._request(prediction_length, num_samples, samples_per_batch, batch_size, seed, keys, progress,
                                show_progress)  # fmt: skip
        array = self._forecast(series, observed, future, request).float().numpy()
        if self.family.output == "quantiles":
            return [QuantileForecast(array[i : i + 1], self.family.quantile_levels) for i in range(array.shape[0])]
        return [TotoForecast(samples=array[i : i + 1]) for i in range(array.shape[0])]

    def _request(
        self, prediction_length: int, num_samples: int | None, samples_per_batch: int | None, *rest: Any
    ) -> SampleRequest:
        """``rest``: batch size, seed, keys, progress, show_progress (:class:`SampleRequest`'s order)."""
        if self.family.output == "quantiles":
            options = {"num_samples": num_samples, "samples_per_batch": samples_per_batch, "seed": rest[1],
                       "sample_keys": rest[2]}  # fmt: skip
            given = [name for name, value in options.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: {self.family.name} forecasts quantiles; it draws no samples")
            knots = len(self.family.quantile_levels)  # the "samples" axis holds the knots
            return SampleRequest(prediction_length, knots, knots, *rest)
        num_samples = 4096 if num_samples is None else num_samples
        samples_per_batch = 512 if samples_per_batch is None else samples_per_batch
        check_int("num_samples", num_samples)
        check_int("samples_per_batch", samples_per_batch)
        return SampleRequest(prediction_length, num_samples, samples_per_batch, *rest)

    @torch.no_grad()
    def predict_df(
        self,
        df: Any,
        future_df: Any = None,
        *,
        id_column: str = "item_id",
        timestamp_column: str = "timestamp",
        target: str | Sequence[str] = "target",
        prediction_length: int,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        num_samples: int = DEFAULT_FRAME_SAMPLES,
        samples_per_batch: int | None = None,
        batch_size: int = DEFAULT_FRAME_BATCH_SIZE,
        seed: int | None = None,
        show_progress: bool | None = None,
    ) -> Any:
        """Forecast every item of a long pandas frame (one row per item and timestamp).

        ``target``: a column, or a list of columns forming one multivariate series per
        item. Items may differ in length and start; a missing row or NaN is a missing
        value. Each item's step is ``pandas.infer_freq`` of its timestamps (else the
        panel's most common frequency, else its median gap); the forecast's timestamps
        continue it. ``future_df`` holds the known future of exogenous columns: its
        columns besides id and timestamp, exactly ``prediction_length`` rows per item.

        Returns a long frame: id, timestamp, ``target_name``, ``predictions`` (the sample
        median), ``mean`` and one column per quantile level (``"0.1"``, ...). Items are
        forecast ``batch_size`` at a time (memory grows with ``batch_size`` times
        ``samples_per_batch``, default ``num_samples``, not with the number of items), and
        only each batch's quantiles are kept. Needs the extra ``toto-compiled[pandas]``.
        """
        options = FrameOptions(
            prediction_length, id_column, timestamp_column, target, quantile_levels, num_samples, samples_per_batch,
            batch_size, seed,
        )  # fmt: skip
        return self.predict_frame(df, future_df, options, show_progress=show_progress)

    @torch.no_grad()
    def predict_frame(
        self, df: Any, future_df: Any, options: FrameOptions, *, show_progress: bool | None = None
    ) -> Any:
        """:meth:`predict_df` with its options as one :class:`~toto.frames.options.FrameOptions`."""
        from ..frames.panel import forecast_frame, read_panel

        panel = read_panel(
            df, future_df, id_column=options.id_column, timestamp_column=options.timestamp_column,
            target=options.targets, prediction_length=options.prediction_length,
        )  # fmt: skip
        summaries = self.predict_panel(panel, options, show_progress=show_progress)
        return forecast_frame(panel, summaries, options.quantile_levels)

    @torch.no_grad()
    def predict_panel(self, panel: "Panel", options: FrameOptions, *, show_progress: bool | None = None) -> np.ndarray:
        """The step :meth:`predict_df` and :func:`toto.evaluation.backtest` share: a validated
        :class:`toto.frames.Panel` -> ``(items, targets, prediction_length, levels + 2)``
        holding each level's quantile, then the median, then the mean.

        With ``options.seed``, each item draws from its own random stream, keyed by the seed,
        its id and its last context timestamp (:func:`~toto.pipeline.batching.item_keys`): its
        samples do not depend on which items share its batch, on ``batch_size`` or on
        ``samples_per_batch``, beyond the rounding of batched arithmetic."""
        series, observed = normalize_context(panel.context())
        future = panel.future_exogenous()
        quantile_model = self.family.output == "quantiles"
        keys = None
        if options.seed is not None and not quantile_model:
            keys = item_keys(options.seed, [i.item_id for i in panel.items], [i.timestamps[-1] for i in panel.items])
        samples, per_batch = options.num_samples, options.samples_per_batch
        if quantile_model and samples == DEFAULT_FRAME_SAMPLES and per_batch == samples:  # the defaults: not asked for
            samples = per_batch = None
        request = self._request(options.prediction_length, samples, per_batch, options.batch_size, options.seed, keys,
                                None, show_progress)  # fmt: skip
        summaries = self._forecast(
            series, observed, None if future is None else torch.from_numpy(future).float(), request,
            summarize=quantile_summary(len(panel.targets), list(options.quantile_levels),
                                       self.family.quantile_levels if quantile_model else None),
        )  # fmt: skip
        return summaries.numpy()

    def predict_quantiles(
        self,
        context: Any,
        prediction_length: int,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        num_samples: int | None = None,
        **predict_kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        """Chronos' ``(quantiles, mean)``: ``(batch, prediction_length, n_quantiles)`` and ``(batch, prediction_length)``.

        Multivariate inputs keep a variate dimension after the batch. The quantiles are those
        of ``num_samples`` sample paths (default 256, as :meth:`predict_df`: the 0.1 and 0.9
        levels then sit within about 0.05 in probability; pass more for tail levels).
        ``predict_kwargs``: those of :meth:`predict`. A quantile model (Toto 2.0) returns its
        own knots at its levels and interpolates between them elsewhere
        (:class:`QuantileForecast`); its mean is the median.
        """
        levels = [float(q) for q in quantile_levels]
        if not levels or any(not 0.0 <= q <= 1.0 for q in levels):
            raise ValueError(f"quantile_levels must be non-empty and within [0, 1], got {quantile_levels!r}")
        if self.family.output == "quantiles":
            forecasts = self.predict(context, prediction_length, num_samples, **predict_kwargs)
            knots = np.concatenate([f.quantiles for f in forecasts])  # [batch, variate, H, knots]
            quantiles = torch.from_numpy(interpolate_knots(knots, self.family.quantile_levels, levels))
            mean = torch.from_numpy(interpolate_knots(knots, self.family.quantile_levels, [0.5])[..., 0])
        else:
            num_samples = DEFAULT_QUANTILE_SAMPLES if num_samples is None else num_samples
            forecasts = self.predict(context, prediction_length, num_samples, **predict_kwargs)
            array = np.concatenate([f.samples for f in forecasts])  # [batch, variate, H, S]
            # numpy, not torch.quantile: that refuses inputs of more than 2**24 elements.
            quantiles = torch.from_numpy(np.moveaxis(np.quantile(array, levels, axis=-1), 0, -1).astype(array.dtype))
            mean = torch.from_numpy(array).mean(dim=-1)
        if quantiles.shape[1] == 1:
            quantiles, mean = quantiles[:, 0], mean[:, 0]
        return quantiles, mean

    def _forecast(
        self,
        series: Tensor,
        observed: Tensor,
        future: Tensor | None,
        request: SampleRequest,
        summarize: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        with self._lock:
            result, self.last_run_metadata = forecast_in_batches(
                self.family, series, observed, future, request, self.back_off, self.amp_dtype, summarize
            )
        return result


def _device(device_map: str | torch.device | None) -> torch.device:
    if device_map is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("device_map=None: loading onto %s", device)
        return device
    device = torch.device(device_map)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device_map={device_map!r}: CUDA is not available on this machine; use device_map='cpu'")
    return device


def _check_predict_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - IGNORED_PREDICT_OPTIONS)
    if unknown:
        raise TypeError(f"predict got unexpected keyword argument(s) {unknown}")
    new = sorted(set(options) - _warned_ignored)
    if new:
        _warned_ignored.update(new)
        warnings.warn(
            f"predict: {', '.join(new)} ignored (Toto has no sampling temperature or top-k/top-p); "
            "this warning is shown once",
            UserWarning,
            stacklevel=4,  # past predict and torch.no_grad's wrapper: the caller's line
        )
