"""Autoregressive forecasting: ``TotoForecaster.forecast`` and the ``Forecast`` it returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..data.util.dataset import MaskedTimeseries, pad_array, pad_id_mask, replace_extreme_values
from ..model.backbone import TotoBackbone
from ..model.distribution import AffineTransformed
from .decoding import decode_step, expand_state, prefill


@dataclass(frozen=True)
class Forecast:
    mean: Float[Tensor, "batch variate horizon"]
    samples: Float[Tensor, "batch variate horizon samples"] | None = None

    def quantile(self, q: float | Tensor) -> Tensor:
        """Linear-interpolated quantile(s) over samples; a tensor ``q`` adds a leading dimension."""
        samples = self._require_samples("quantile")
        q_t = torch.as_tensor(q, dtype=samples.dtype, device=samples.device)
        if not ((q_t >= 0) & (q_t <= 1)).all():  # also rejects NaN
            raise ValueError(f"q must lie in [0, 1], got {q}")
        ordered = samples.sort(dim=-1).values
        rank = q_t.reshape(-1) * (ordered.shape[-1] - 1)
        lower = rank.floor().long()
        upper = rank.ceil().long()
        frac = (rank - lower).to(samples.dtype)
        values = torch.lerp(ordered[..., lower], ordered[..., upper], frac)  # [..., len(q)]
        values = values.movedim(-1, 0)
        return values.reshape(*q_t.shape, *samples.shape[:-1])

    @property
    def median(self) -> Float[Tensor, "batch variate horizon"]:
        return self.quantile(0.5)

    @property
    def std(self) -> Float[Tensor, "batch variate horizon"]:
        return self._require_samples("std").std(dim=-1)

    def _require_samples(self, what: str) -> Tensor:
        if self.samples is None:
            raise ValueError(f"Forecast.{what} needs samples; forecast with num_samples set")
        return self.samples


class TotoForecaster:
    """Forecasts with a :class:`TotoBackbone`, one patch at a time.

    The context is encoded once per series; its KV cache and scaler state are
    then copied into every sample trajectory (upstream re-encodes the context
    for every sample batch; the outputs have the same distribution).
    """

    def __init__(self, model: TotoBackbone):
        self.model = model.eval()

    @torch.no_grad()
    def forecast(
        self,
        inputs: MaskedTimeseries,
        prediction_length: int,
        num_samples: int | None = None,
        samples_per_batch: int = 10,
        use_kv_cache: bool = True,
    ) -> Forecast:
        """Forecast ``prediction_length`` steps: the mean path (``num_samples=None``) or sample paths.

        ``num_samples`` need not be a multiple of ``samples_per_batch``.
        """
        _check_positive_int("prediction_length", prediction_length)
        _check_positive_int("samples_per_batch", samples_per_batch)
        if num_samples is not None:
            _check_positive_int("num_samples", num_samples)
        if inputs.num_exogenous_variables:
            raise NotImplementedError("num_exogenous_variables > 0 (exogenous inputs) is not supported")
        series, observed, ids = self._prepare(inputs)
        patch = self.model.patch_size
        num_steps = -(-prediction_length // patch)

        if num_samples is None:
            path = self._decode(series, observed, ids, num_steps, sample_rows=None, use_kv_cache=use_kv_cache)
            mean = path[..., :prediction_length]
            return Forecast(mean=mean, samples=None)

        batches = []
        for start in range(0, num_samples, samples_per_batch):
            rows = min(samples_per_batch, num_samples - start)
            batches.append(self._decode(series, observed, ids, num_steps, sample_rows=rows, use_kv_cache=use_kv_cache))
        # Each batch is laid out (sample, series); stack samples last.
        batch = series.shape[0]
        paths = torch.cat([b.unflatten(0, (-1, batch)) for b in batches], dim=0)
        samples = paths[..., :prediction_length].permute(1, 2, 3, 0)
        return Forecast(mean=samples.mean(dim=-1), samples=samples)

    def _prepare(self, inputs: MaskedTimeseries) -> tuple[Tensor, Tensor, Tensor]:
        series = torch.as_tensor(inputs.series)
        if series.ndim not in (2, 3):
            raise ValueError(f"inputs.series must be [variate, time] or [batch, variate, time], got shape {tuple(series.shape)}")
        unbatched = series.ndim == 2
        observed = torch.as_tensor(inputs.padding_mask)
        ids = torch.as_tensor(inputs.id_mask)
        if unbatched:
            series, observed, ids = series[None], observed[None], ids[None]
        if observed.shape != series.shape:
            raise ValueError(f"inputs.padding_mask has shape {tuple(observed.shape)}, expected {tuple(series.shape)}")
        ids = ids.expand_as(series)
        param = next(self.model.parameters())
        patch = self.model.patch_size
        series = pad_array(series.to(device=param.device, dtype=param.dtype), patch)
        observed = pad_array(observed.to(device=param.device, dtype=torch.bool), patch)
        ids = pad_id_mask(ids.to(device=param.device), patch)
        per_patch = ids.unflatten(-1, (-1, patch))
        if (per_patch.amin(-1) != per_patch.amax(-1)).any():
            raise ValueError("inputs.id_mask changes inside a patch; ids may only change at patch boundaries")
        return series, observed, ids

    def _decode(
        self, series: Tensor, observed: Tensor, ids: Tensor, num_steps: int, sample_rows: int | None, use_kv_cache: bool
    ) -> Float[Tensor, "rows variate steps_x_patch"]:
        """One decoding run; ``sample_rows=None`` follows the mean, else draws that many paths per series.

        Sample rows are laid out (sample, series), samples outermost, as upstream.
        """
        if not use_kv_cache:
            return self._decode_without_cache(series, observed, ids, num_steps, sample_rows)
        num_context = series.shape[-1] // self.model.patch_size
        distribution, state = prefill(self.model, series, observed, ids, capacity=num_context + num_steps - 1)
        if sample_rows is None:
            patch = _next_patch(distribution, None)
        else:  # one prefill serves every sample: draw sample_rows patches from it, then copy the state
            patch = _next_patch(distribution, sample_rows)
            state = expand_state(state, sample_rows)
        patches = [patch]
        for _ in range(num_steps - 1):
            state.cache.advance(1)
            distribution, state = decode_step(self.model, state, patch)
            patch = _next_patch(distribution, None if sample_rows is None else 0)
            patches.append(patch)
        return torch.cat(patches, dim=-1)

    def _decode_without_cache(
        self, series: Tensor, observed: Tensor, ids: Tensor, num_steps: int, sample_rows: int | None
    ) -> Tensor:
        """Re-encode the whole grown series every step (upstream's ``use_kv_cache=False``)."""
        if sample_rows is not None:
            series, observed, ids = (t.repeat(sample_rows, 1, 1) for t in (series, observed, ids))
        prefix_length = series.shape[-1]
        patch_size = self.model.patch_size
        patches = []
        for _ in range(num_steps):
            base, loc, scale = self.model(series, observed, ids, scaling_prefix_length=prefix_length)
            last_patch = base.last_steps(patch_size)
            distribution = AffineTransformed(last_patch, loc[..., -patch_size:], scale[..., -patch_size:])
            patch = _next_patch(distribution, None if sample_rows is None else 0)
            patches.append(patch)
            series = torch.cat((series, patch), dim=-1)
            observed = torch.cat((observed, torch.ones_like(patch, dtype=torch.bool)), dim=-1)
            ids = torch.cat((ids, ids[..., -1:].expand_as(patch)), dim=-1)
        return torch.cat(patches, dim=-1)


def _next_patch(distribution: AffineTransformed, draws: int | None) -> Tensor:
    """The mean (``draws=None``), one draw per row (``0``), or ``draws`` draws stacked outermost."""
    if draws is None:
        value = distribution.mean
    elif draws == 0:
        value = distribution.sample()
    else:
        value = distribution.sample((draws,)).flatten(0, 1)
    return replace_extreme_values(value)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
