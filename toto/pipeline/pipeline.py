"""``TotoPipeline``: a Chronos-style wrapper for backtests, on top of :class:`TotoForecaster`.

It normalises the many accepted context forms to ``[batch, variate, time]``
with an observation mask (lists of unequal lengths are left-padded; NaN counts
as missing), seeds calls on request, backs off on CUDA out-of-memory, and
records what each call actually did in :attr:`TotoPipeline.last_run_metadata`.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
import threading
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..compile.policy import CompileSettings
from ..data.util.dataset import MaskedTimeseries, first_observed_step, masked_timeseries
from ..compile.diagnostics import snapshot
from ..inference.forecaster import TotoForecaster, known_future
from ..inference.keyed_random import series_keys
from ..checkpoints.reading import DEFAULT_MODEL_ID
from .progress import batch_bar
from ..model.toto import Toto
from ..arguments import as_batch_variate_time, as_float_tensor, check_int

if TYPE_CHECKING:
    from ..frames.panel import Panel

HUB_OPTIONS = frozenset({"revision", "cache_dir", "local_files_only", "token", "force_download"})
IGNORED_PREDICT_OPTIONS = frozenset({"temperature", "top_k", "top_p"})  # accepted by the old wrapper
DEFAULT_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_FRAME_BATCH_SIZE = 32  # series per batch in predict_df and backtests


@dataclass(frozen=True)
class TotoForecast:
    """One series' forecast. ``samples`` is ``(1, variates, prediction_length, num_samples)``."""

    samples: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """``(1, variates, prediction_length)``."""
        return self.samples.mean(axis=-1)

    def quantile(self, q: float | Sequence[float]) -> np.ndarray:
        """Quantile(s) over samples; a sequence of levels adds a leading dimension."""
        return np.quantile(self.samples, q, axis=-1)

    def numpy(self) -> np.ndarray:
        """Chronos layout: ``(num_samples, prediction_length)``, or ``(variates, num_samples, prediction_length)``."""
        per_variate = np.swapaxes(self.samples[0], -1, -2)
        return per_variate[0] if per_variate.shape[0] == 1 else per_variate


class TotoPipeline:
    def __init__(
        self,
        model: Toto,
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
        if amp_dtype not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"amp_dtype must be torch.float16, torch.bfloat16 or None, got {amp_dtype!r}")
        check_int("max_oom_retries", max_oom_retries, minimum=0)
        check_int("min_samples_per_batch", min_samples_per_batch)
        check_int("min_num_samples", min_num_samples)
        self.model = model.eval()
        # What a fine-tuned copy (fit) is built with: everything but the model.
        self._settings = dict(
            torch_compile=torch_compile, compile_mode=compile_mode, compile_backend=compile_backend,
            compile_prefill=compile_prefill, compile_cache_dir=compile_cache_dir, amp_dtype=amp_dtype,
            max_oom_retries=max_oom_retries, min_samples_per_batch=min_samples_per_batch,
            min_num_samples=min_num_samples,
        )  # fmt: skip
        self.forecaster = TotoForecaster(
            model.model,
            torch_compile=torch_compile,
            compile_mode=compile_mode,
            compile_backend=compile_backend,
            compile_prefill=compile_prefill,
            compile_cache_dir=compile_cache_dir,
        )
        self.amp_dtype = amp_dtype
        self.max_oom_retries = max_oom_retries
        self.min_samples_per_batch = min_samples_per_batch
        self.min_num_samples = min_num_samples
        self.last_run_metadata: dict[str, Any] = {}
        self.fit_history: Any = None  # a FitHistory on pipelines returned by fit
        # One predict at a time: the forecaster's buffers, the seeded RNG and the metadata are shared.
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = DEFAULT_MODEL_ID,
        device_map: str | torch.device = "cuda",
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
        """Load ``model_id`` (hub id or local folder) onto ``device_map``.

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
        device = torch.device(device_map)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device_map={device_map!r}: CUDA is not available on this machine; use device_map='cpu'")
        check_int("warmup_sequence", warmup_sequence, minimum=0)
        model = Toto.from_pretrained(model_id, device=device, dtype=torch_dtype, **hub_kwargs)
        pipeline = cls(
            model,
            torch_compile=torch_compile,
            compile_mode=compile_mode,
            compile_backend=compile_backend,
            compile_prefill=compile_prefill,
            compile_cache_dir=compile_cache_dir,
            amp_dtype=amp_dtype,
            max_oom_retries=max_oom_retries,
            min_samples_per_batch=min_samples_per_batch,
            min_num_samples=min_num_samples,
        )
        if warmup_sequence:
            pipeline.predict(torch.zeros(warmup_sequence), 2 * model.config.patch_size, num_samples=512, samples_per_batch=512)
        return pipeline

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def compiled(self) -> bool:
        """Whether decoding runs compiled (False when not requested or after a compile failure)."""
        return self.forecaster.compiled

    @property
    def compile_settings(self) -> CompileSettings:
        return self.forecaster.compile_settings

    def warmup(
        self,
        context_lengths: Sequence[int] | int,
        prediction_length: int,
        num_samples: int = 4096,
        samples_per_batch: int = 512,
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
            by_bucket.setdefault(self.forecaster.capacity_for(length, prediction_length), length)
        report = []
        for index, (capacity, length) in enumerate(sorted(by_bucket.items()), start=1):
            started = time.perf_counter()
            context = torch.zeros(batch_size, num_variates, length)
            self.predict(context, prediction_length, num_samples, samples_per_batch)
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
        import copy

        from ..training import FitOptions, TrainingDiverged, fit_backbone

        fields = set(FitOptions.__dataclass_fields__) - {"prediction_length", "context_length", "num_steps"}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"TotoPipeline.fit got unexpected keyword argument(s) {unknown}")
        settings = FitOptions(
            prediction_length=prediction_length, context_length=context_length, num_steps=num_steps,
            batch_size=batch_size, learning_rate=learning_rate, **options,
        )  # fmt: skip
        settings.check()  # before copying the model
        model = copy.deepcopy(self.model)
        try:
            history = fit_backbone(model.model, inputs, settings, validation_inputs)
        except TrainingDiverged as err:
            err.model = model.eval()
            raise
        tuned = type(self)(model, **self._settings)
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
        return self.model.save_pretrained(directory)

    def unload(self) -> None:
        """Free the model, its decode buffers and compiled graphs' caches."""
        self.forecaster.clear_buffers()
        self.model.to("meta")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @torch.no_grad()
    def predict(
        self,
        context: Any,
        prediction_length: int,
        num_samples: int = 4096,
        samples_per_batch: int = 512,
        *,
        time_interval_seconds: int = 900,
        seed: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        future_covariates: Any = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
        sample_keys: Any = None,
        **kwargs: Any,
    ) -> list[TotoForecast]:
        """Sample forecasts, one :class:`TotoForecast` per series.

        ``future_covariates`` (``(batch, covariates, prediction_length)``, or without the
        batch dimension for one series): the known future of the context's *last*
        ``covariates`` variates, which replaces what the model decodes for them (upstream's
        exogenous variables). The forecasts report them as given.

        Series are forecast ``batch_size`` at a time (default: all at once), longest
        first, each batch cut to its own longest series, so short series are not padded
        to the longest of the whole call. Leading padding is hidden from the model
        (``hide_leading_padding``): each series is forecast as it would be alone, so its
        forecast distribution does not depend on ``batch_size`` (its draws do, through the
        random stream). With ``seed``, batch ``i`` is seeded
        with ``seed + i``. ``sample_keys`` (one integer per series, e.g. from
        :func:`toto.inference.keyed_random.series_key`) instead draws each series from its own
        random stream, so its samples do not depend on ``batch_size`` or on the other series
        (beyond the rounding of batched arithmetic); ``seed`` is then unused. ``progress(done, total)`` is called after each decoded patch of
        each sample batch of each batch of series. ``show_progress`` draws a tqdm bar over
        the batches of series on stderr (``None``: when stderr is a terminal, tqdm is
        installed and there are several batches).
        """
        unknown = sorted(set(kwargs) - IGNORED_PREDICT_OPTIONS)
        if unknown:
            raise TypeError(f"predict got unexpected keyword argument(s) {unknown}")
        check_int("prediction_length", prediction_length)
        check_int("num_samples", num_samples)
        check_int("samples_per_batch", samples_per_batch)
        if batch_size is not None:
            check_int("batch_size", batch_size)
        series, observed = normalize_context(context)
        future = None
        if future_covariates is not None:
            future = covariates_tensor(future_covariates, series, prediction_length)
        keys = None if sample_keys is None else _keys_tensor(sample_keys, series.shape[0])
        samples = self._predict_batched(
            series, observed, future, prediction_length, num_samples, samples_per_batch, batch_size,
            time_interval_seconds=time_interval_seconds, seed=seed, progress=progress, show_progress=show_progress,
            keys=keys,
        )
        array = samples.float().numpy()
        return [TotoForecast(samples=array[i : i + 1]) for i in range(array.shape[0])]

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
        num_samples: int = 256,
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
        from ..frames.panel import check_quantile_levels, forecast_frame, read_panel

        check_int("prediction_length", prediction_length)
        check_int("num_samples", num_samples)
        check_int("batch_size", batch_size)
        samples_per_batch = num_samples if samples_per_batch is None else samples_per_batch
        check_int("samples_per_batch", samples_per_batch)
        levels = check_quantile_levels(quantile_levels)
        panel = read_panel(
            df, future_df, id_column=id_column, timestamp_column=timestamp_column, target=target,
            prediction_length=prediction_length,
        )
        summaries = self.predict_panel(
            panel, prediction_length, levels, num_samples, samples_per_batch, batch_size, seed=seed,
            show_progress=show_progress,
        )
        return forecast_frame(panel, summaries, levels)

    @torch.no_grad()
    def predict_panel(
        self,
        panel: "Panel",
        prediction_length: int,
        quantile_levels: Sequence[float],
        num_samples: int,
        samples_per_batch: int,
        batch_size: int,
        *,
        seed: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """The step :meth:`predict_df` and :func:`toto.evaluation.backtest` share: a validated
        :class:`toto.frames.Panel` -> ``(items, targets, prediction_length, levels + 2)``
        holding each level's quantile, then the median, then the mean.

        With ``seed``, each item draws from its own random stream, keyed by the seed, its id
        and its last context timestamp (:func:`item_keys`): its samples do not depend on
        which items share its batch, on ``batch_size`` or on ``samples_per_batch``, beyond
        the rounding of batched arithmetic (none when the batch is the same)."""
        series, observed = normalize_context(panel.context())
        future = panel.future_exogenous()
        summaries = self._predict_batched(
            series, observed, None if future is None else torch.from_numpy(future).float(), prediction_length,
            num_samples, samples_per_batch, batch_size, time_interval_seconds=900, seed=None, progress=None,
            show_progress=show_progress, summarize=_quantile_summary(len(panel.targets), list(quantile_levels)),
            keys=None if seed is None else item_keys(seed, [i.item_id for i in panel.items],
                                                     [i.timestamps[-1] for i in panel.items]),
        )
        return summaries.numpy()

    def _predict_batched(
        self,
        series: Tensor,
        observed: Tensor,
        future: Tensor | None,
        prediction_length: int,
        num_samples: int,
        samples_per_batch: int,
        batch_size: int | None,
        *,
        time_interval_seconds: int,
        seed: int | None,
        progress: Callable[[int, int], None] | None,
        show_progress: bool | None,
        summarize: Callable[[Tensor], Tensor] | None = None,
        keys: Tensor | None = None,
    ) -> Tensor:
        """``(batch, variate, prediction_length, num_samples)`` samples on the CPU, or, with
        ``summarize``, what it makes of each batch's samples (so only one batch's samples are
        ever held at once). ``keys``: each series' random-stream key (then ``seed`` is unused)."""
        size = batch_size or series.shape[0]
        with self._lock:
            before = snapshot()
            splits = 0
            while True:
                batches = length_sorted_batches(observed, size, keys)
                try:
                    parts, used = self._forecast_batches(
                        series, observed, future, batches, prediction_length, num_samples, samples_per_batch,
                        time_interval_seconds, seed, progress, show_progress, summarize, keys,
                    )
                    break
                except _BatchTooLarge:
                    # Splitting costs speed only; cutting num_samples (the last resort) costs quality.
                    if splits >= self.max_oom_retries:
                        raise torch.cuda.OutOfMemoryError(
                            f"CUDA out of memory at batch_size={size} after {splits} halvings (max_oom_retries)"
                        ) from None
                    splits += 1
                    size = max(1, size // 2)
                    warnings.warn(f"CUDA out of memory; retrying with batch_size={size}", RuntimeWarning, stacklevel=3)
            self.last_run_metadata = {
                "num_samples_requested": num_samples,
                "samples_per_batch_requested": samples_per_batch,
                "batch_size": len(batches[0]),
                "num_batches": len(batches),
                **used,
                "oom_retries": used["oom_retries"] + splits,
                "compile_stats": (snapshot() - before).as_dict(),
            }
            if summarize is None:
                # A back-off may have cut num_samples in some batches only: keep what all have.
                kept = min(part.shape[-1] for part in parts)
                parts = [part[..., :kept] for part in parts]
            result = torch.empty(series.shape[0], *parts[0].shape[1:], dtype=parts[0].dtype)
            for index, part in zip(batches, parts):
                result[index] = part.cpu()
        return result

    def predict_quantiles(
        self,
        context: Any,
        prediction_length: int,
        quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
        num_samples: int = 4096,
        **predict_kwargs: Any,
    ) -> tuple[Tensor, Tensor]:
        """Chronos' ``(quantiles, mean)``: ``(batch, prediction_length, n_quantiles)`` and ``(batch, prediction_length)``.

        Multivariate inputs keep a variate dimension after the batch.
        """
        levels = [float(q) for q in quantile_levels]
        if not levels or any(not 0.0 <= q <= 1.0 for q in levels):
            raise ValueError(f"quantile_levels must be non-empty and within [0, 1], got {quantile_levels!r}")
        forecasts = self.predict(context, prediction_length, num_samples, **predict_kwargs)
        array = np.concatenate([f.samples for f in forecasts])  # [batch, variate, H, S]
        # numpy, not torch.quantile: that refuses inputs of more than 2**24 elements.
        quantiles = torch.from_numpy(np.moveaxis(np.quantile(array, levels, axis=-1), 0, -1).astype(array.dtype))
        samples = torch.from_numpy(array)
        mean = samples.mean(dim=-1)
        if samples.shape[1] == 1:
            quantiles, mean = quantiles[:, 0], mean[:, 0]
        return quantiles, mean

    def _forecast_batches(
        self,
        series: Tensor,
        observed: Tensor,
        future: Tensor | None,
        batches: list[Tensor],
        prediction_length: int,
        num_samples: int,
        samples_per_batch: int,
        time_interval_seconds: int,
        seed: int | None,
        progress: Callable[[int, int], None] | None,
        show_progress: bool | None = None,
        summarize: Callable[[Tensor], Tensor] | None = None,
        keys: Tensor | None = None,
    ) -> tuple[list[Tensor], dict]:
        """Each batch of series (batch ``i`` seeded ``seed + i``, or its series drawn from
        their ``keys``' streams); its samples (or their summary) and the merged metadata."""
        bar = batch_bar(len(batches), show_progress)
        parts, retries = [], 0
        try:
            for number, index in enumerate(batches):
                # Left on the CPU: the forecaster validates there (no device syncs) and moves it.
                inputs = masked_timeseries(*trim_to_longest(series[index], observed[index]), time_interval_seconds)
                chunk_future = None
                if future is not None:
                    chunk_future = future[index]
                    inputs = inputs._replace(num_exogenous_variables=future.shape[1])
                samples, used = self._forecast_with_backoff(
                    inputs,
                    prediction_length,
                    num_samples,
                    samples_per_batch,
                    None if seed is None else seed + number,
                    _batch_progress(progress, number, len(batches)),
                    chunk_future,
                    None if keys is None else keys[index],
                )
                parts.append(samples if summarize is None else summarize(samples))
                retries += used["oom_retries"]
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return parts, {**used, "oom_retries": retries}

    def _forecast_with_backoff(
        self,
        inputs: MaskedTimeseries,
        prediction_length: int,
        num_samples: int,
        per_batch: int,
        seed: int | None,
        progress: Callable[[int, int], None] | None,
        future: Tensor | None = None,
        keys: Tensor | None = None,
    ) -> tuple[Tensor, dict]:
        """Forecast; on CUDA OOM halve ``samples_per_batch``, then ask for fewer series per batch
        (:class:`_BatchTooLarge`), then halve ``num_samples``, down to the minimums."""
        retries = 0
        before = snapshot()
        while True:
            try:
                with self._rng(seed), self._autocast():
                    forecast = self.forecaster.forecast(
                        inputs,
                        prediction_length,
                        num_samples,
                        min(per_batch, num_samples),
                        future_exogenous_variables=future,
                        progress=progress,
                        hide_leading_padding=True,
                        sample_keys=keys,
                    )
                break
            except torch.cuda.OutOfMemoryError:
                smaller_batch = max(self.min_samples_per_batch, per_batch // 2)
                if smaller_batch >= per_batch and inputs.series.shape[0] > 1:
                    self.forecaster.clear_buffers()
                    raise _BatchTooLarge from None
                fewer_samples = max(self.min_num_samples, num_samples // 2)
                if retries >= self.max_oom_retries or (smaller_batch >= per_batch and fewer_samples >= num_samples):
                    raise
                retries += 1
                if smaller_batch < per_batch:
                    per_batch = smaller_batch
                else:
                    num_samples = fewer_samples
                warnings.warn(
                    f"CUDA out of memory; retrying with num_samples={num_samples}, samples_per_batch={per_batch}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.forecaster.clear_buffers()  # pooled buffers of other shapes may be what filled memory
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        settings = self.forecaster.compile_settings
        used = {
            "num_samples_used": num_samples,
            "samples_per_batch_used": min(per_batch, num_samples),
            "oom_retries": retries,
            "torch_dtype": str(next(self.model.parameters()).dtype),
            "amp_dtype": None if self.amp_dtype is None else str(self.amp_dtype),
            "torch_compile_requested": settings.enabled,
            "torch_compile_success": self.forecaster.compiled,
            "torch_compile_mode": settings.mode if settings.enabled else None,
            "torch_compile_error": self.forecaster.compile_error,
            "compile_stats": (snapshot() - before).as_dict(),
            "device": str(self.device),
        }
        return forecast.samples, used

    def _rng(self, seed: int | None):
        return nullcontext() if seed is None else _seeded(seed, self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def _quantile_summary(targets: int, levels: list[float]) -> Callable[[Tensor], Tensor]:
    """Samples ``(batch, variate, H, S)`` -> ``(batch, targets, H, levels + 2)``: the quantiles, the median, the mean."""

    def summarize(samples: Tensor) -> Tensor:
        values = samples[:, :targets].cpu().double().numpy()
        quantiles = np.moveaxis(np.quantile(values, [*levels, 0.5], axis=-1), 0, -1)
        return torch.from_numpy(np.concatenate([quantiles, values.mean(axis=-1, keepdims=True)], axis=-1))

    return summarize


class _BatchTooLarge(Exception):
    """Out of memory with ``samples_per_batch`` at its minimum and several series in the batch."""


def length_sorted_batches(observed: Tensor, batch_size: int, keys: Tensor | None = None) -> list[Tensor]:
    """Indices of the series in batches of ``batch_size``, longest context first.

    A context starts at its first observed value in any variate; neighbours in length
    share a batch, so the left padding inside each batch stays small. Ties go by ``keys``
    when given (so the batches do not depend on the order of the input), else by position.
    """
    order = torch.arange(observed.shape[0]) if keys is None else torch.sort(keys, stable=True).indices
    starts = first_observed_step(observed)[order]
    order = order[torch.sort(starts, stable=True).indices]  # earliest start = longest first
    return list(order.split(batch_size))


def item_keys(seed: int, item_ids: Sequence[Any], last_timestamps: Sequence[Any]) -> Tensor:
    """Each item's random-stream key: from the seed, its id and its context's last timestamp
    (so the windows of a backtest, which share an id, draw from different streams).
    The Ray engine's planner keys items with it too, to order them as this process does."""
    return series_keys(seed, list(zip(item_ids, last_timestamps)))


def trim_to_longest(series: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the leading steps that no series of the batch observes."""
    start = int(first_observed_step(observed).min())
    return series[..., start:], observed[..., start:]


def _batch_progress(
    progress: Callable[[int, int], None] | None, number: int, count: int
) -> Callable[[int, int], None] | None:
    """``progress`` over all batches of series, from one batch's ``(done, total)``."""
    if progress is None:
        return None
    return lambda done, total: progress(number * total + done, count * total)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's generators for one call without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _keys_tensor(keys: Any, count: int) -> Tensor:
    """``sample_keys`` as int64, one per series."""
    try:
        array = np.asarray(keys.cpu() if isinstance(keys, Tensor) else keys)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sample_keys must be integers, one per series: {err}") from None
    if array.shape != (count,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"sample_keys must be {count} integers (one per series), got {array.dtype} of shape {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def covariates_tensor(future: Any, series: Tensor, prediction_length: int) -> Tensor:
    """``future_covariates`` as a validated float tensor ``(batch, covariates, prediction_length)``."""
    try:
        future = torch.as_tensor(np.asarray(future, dtype=np.float64) if not isinstance(future, Tensor) else future)
    except (TypeError, ValueError) as err:
        raise ValueError(f"future_covariates must be a numeric array or tensor: {err}") from None
    if future.ndim == 2 and series.shape[0] == 1:
        future = future[None]
    batch, variates, _ = series.shape
    if future.ndim != 3:
        raise ValueError(
            f"future_covariates must be (batch, covariates, prediction_length), or (covariates, prediction_length) "
            f"for one series; got shape {tuple(future.shape)} for a context of shape {tuple(series.shape)}"
        )
    if not 0 < future.shape[1] < variates:
        raise ValueError(
            f"future_covariates has {future.shape[1]} covariates but the context has {variates} variates: the "
            "covariates are the context's last variates, and at least one target must remain"
        )
    known_future(future, future.shape[1], series, prediction_length, prediction_length, name="future_covariates")
    return future


def normalize_context(context: Any) -> tuple[Tensor, Tensor]:
    """Any accepted context form -> ``(series [batch, variate, time] float32, observed mask)``.

    1-D: one series. 2-D tensor/array: a batch of equal-length series. 3-D: (batch,
    variate, time). A list of 1-D series of different lengths is left-padded with NaN.
    NaN marks a missing value: ``observed`` is False there (the forecaster fills it).
    """
    if isinstance(context, (str, bytes)):
        raise TypeError(f"context must be numeric (tensor, array or list), got {type(context).__name__}")
    if isinstance(context, (list, tuple)) and context and all(_is_1d(c) for c in context):
        rows = [as_float_tensor(c, f"context[{i}]") for i, c in enumerate(context)]
        for i, row in enumerate(rows):
            if row.numel() == 0:
                raise ValueError(f"context[{i}] has no values; every series needs at least one")
        length = max(r.shape[0] for r in rows)
        series = torch.full((len(rows), 1, length), math.nan)
        for i, r in enumerate(rows):
            series[i, 0, length - r.shape[0] :] = r
    else:
        series = as_batch_variate_time(as_float_tensor(context, "context"), "context")
    if series.shape[0] == 0 or series.shape[1] == 0 or series.shape[-1] == 0:
        raise ValueError(f"context is empty (shape {tuple(series.shape)})")
    infinite = torch.isinf(series)
    if infinite.any():
        batch, variate, step = infinite.nonzero()[0].tolist()
        raise ValueError(
            f"context: series {batch} (variate {variate}) has ±inf at position {step}; use NaN for a missing value"
        )
    observed = ~torch.isnan(series)
    empty = ~observed.any(dim=-1)
    if empty.any():
        batch, variate = empty.nonzero()[0].tolist()
        raise ValueError(f"context: series {batch} (variate {variate}) has no observed value (all NaN)")
    return series, observed


def _is_1d(value: Any) -> bool:
    if isinstance(value, (Tensor, np.ndarray)):
        return value.ndim == 1
    return isinstance(value, (list, tuple))
