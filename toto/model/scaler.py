"""Toto's causal patch scaler, in the full-sequence form and the one-patch-at-a-time form.

Statistics run in float64: causal mean and Welford M2 via cumulative sums, Bessel-corrected
variance, ``scale = sqrt(var + 0.1)``, optionally clamped around the context's global scale
(:func:`_global_scale_bounds`). Each patch is scaled by the statistics at its *last* step;
the running sums after the context (:class:`ScalerState`) let decoding scale only the new patch.
:class:`CausalStdMeanScaler` and :class:`CausalPatchStdMeanScaler` are upstream's API for them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import repeat
from jaxtyping import Bool, Float
from torch import Tensor, nn


class ScalerState(NamedTuple):
    """Running float64 sums after the last scaled step, each ``[batch, variate]``."""

    weight_sum: Tensor
    value_sum: Tensor
    m2: Tensor
    min_scale: Tensor  # clamp bounds from the context's global statistics
    max_scale: Tensor


def _causal_moments(x64: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-step running weight sum, weighted value sum, mean and Welford M2 along the last axis."""
    weight_sum = torch.cumsum(w, dim=-1)
    value_sum = torch.cumsum(w * x64, dim=-1)
    mean = value_sum / weight_sum.clamp_min(1.0)
    previous_mean = F.pad(mean[..., :-1], (1, 0))
    m2 = torch.cumsum((x64 - previous_mean) * (x64 - mean) * w, dim=-1)
    return weight_sum, value_sum, mean, m2


def _continued_moments(state: "ScalerState", x64: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_causal_moments` of steps that follow the sums in ``state``."""
    weight_sum = state.weight_sum[..., None] + torch.cumsum(w, dim=-1)
    value_sum = state.value_sum[..., None] + torch.cumsum(w * x64, dim=-1)
    mean = value_sum / weight_sum.clamp_min(1.0)
    start_mean = (state.value_sum / state.weight_sum.clamp_min(1.0))[..., None]
    previous_mean = torch.cat((start_mean, mean[..., :-1]), dim=-1)
    m2 = state.m2[..., None] + torch.cumsum((x64 - previous_mean) * (x64 - mean) * w, dim=-1)
    return weight_sum, value_sum, mean, m2


def _spread_over_patch(per_patch: Tensor, patch_size: int) -> Tensor:
    """One value per patch -> the same value at each of the patch's steps."""
    return repeat(per_patch, "... patches -> ... (patches step)", step=patch_size)


def _causal_variance(weight_sum: Tensor, m2: Tensor, bessel: bool) -> Tensor:
    # Counts are clamped to 1 so empty and single-value prefixes give variance 0, not inf/NaN.
    count = weight_sum.clamp_min(1.0)
    return m2 / (count - 1.0).clamp_min(1.0) if bessel else m2 / count


def _global_scale_bounds(
    x64: Tensor, w: Tensor, prefix_length: int, minimum_scale: float, exponent: float
) -> tuple[Tensor, Tensor]:
    """Clamp bounds ``[max(minimum_scale, g / 10**e), g * 10**e]`` from the first ``prefix_length`` steps."""
    x64, w = x64[..., :prefix_length], w[..., :prefix_length]
    count = w.sum(-1).clamp_min(1.0)
    mean = torch.nan_to_num((w * x64).sum(-1) / count)
    # The weight sits inside the square, as upstream has it: fractional weights count squared.
    variance = (((x64 - mean[..., None]) * w) ** 2).sum(-1) / count
    global_scale = torch.sqrt(variance + minimum_scale)
    factor = 10.0**exponent
    return (global_scale / factor).clamp_min(minimum_scale), global_scale * factor


class CausalPatchScaler(nn.Module):
    def __init__(
        self,
        patch_size: int,
        stabilize_with_global: bool = True,
        scale_factor_exponent: float = 10.0,
        minimum_scale: float = 0.1,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.stabilize_with_global = stabilize_with_global
        self.scale_factor_exponent = scale_factor_exponent
        self.minimum_scale = minimum_scale

    def forward(
        self,
        x: Float[Tensor, "batch variate time"],
        observed: Bool[Tensor, "batch variate time"],
        prefix_length: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, ScalerState]:
        """Scale a whole sequence; returns ``(scaled, loc, scale, state)`` with per-step loc/scale."""
        w = observed.to(torch.float64)
        x64 = x.to(torch.float64)
        weight_sum, value_sum, mean, m2 = _causal_moments(x64, w)

        min_scale, max_scale = self._bounds(x64, w, x.shape[-1] if prefix_length is None else prefix_length)
        end = slice(self.patch_size - 1, None, self.patch_size)  # last step of each patch
        loc, scale = self._loc_scale(weight_sum[..., end], mean[..., end], m2[..., end], min_scale[..., None], max_scale[..., None])
        loc, scale = (_spread_over_patch(t.to(x.dtype), self.patch_size) for t in (loc, scale))
        state = ScalerState(weight_sum[..., -1], value_sum[..., -1], m2[..., -1], min_scale, max_scale)
        return (x - loc) / scale, loc, scale, state

    def step(
        self, state: ScalerState, patch: Float[Tensor, "batch variate patch"]
    ) -> tuple[Tensor, Tensor, Tensor, ScalerState]:
        """Scale one fully observed patch; returns ``(scaled, loc, scale, new_state)``, loc/scale ``[batch, variate]``."""
        x64 = patch.to(torch.float64)
        weight_sum, value_sum, mean, m2 = _continued_moments(state, x64, torch.ones_like(x64))
        new_state = ScalerState(weight_sum[..., -1], value_sum[..., -1], m2[..., -1], state.min_scale, state.max_scale)
        loc, scale = self._loc_scale(new_state.weight_sum, mean[..., -1], new_state.m2, state.min_scale, state.max_scale)
        loc, scale = loc.to(patch.dtype), scale.to(patch.dtype)
        return (patch - loc[..., None]) / scale[..., None], loc, scale, new_state

    def append(
        self, state: ScalerState, patch: Float[Tensor, "batch variate patch"], observed: Bool[Tensor, "batch variate patch"]
    ) -> tuple[Tensor, Tensor, Tensor, ScalerState, Tensor]:
        """Scale one observed context patch (missing steps carry no weight) that grows the context:
        the clamp bounds are those of the grown context, as a fresh call on it has them.

        Returns ``(scaled, loc, scale, new_state, raw_scale)``; ``raw_scale`` (float64
        ``[batch, variate]``) is the scale before clamping, which a stream compares with the
        new bounds to know whether its earlier patches would now be clamped otherwise.
        """
        x64, w = patch.to(torch.float64), observed.to(torch.float64)
        weight_sum, value_sum, mean, m2 = _continued_moments(state, x64, w)
        min_scale, max_scale = self.bounds_of_sums(weight_sum[..., -1], m2[..., -1])
        new_state = ScalerState(weight_sum[..., -1], value_sum[..., -1], m2[..., -1], min_scale, max_scale)
        raw_scale = torch.sqrt(_causal_variance(new_state.weight_sum, new_state.m2, bessel=True) + self.minimum_scale)
        loc, scale = mean[..., -1], torch.minimum(torch.maximum(raw_scale, min_scale), max_scale)
        loc, scale = loc.to(patch.dtype), scale.to(patch.dtype)
        return (patch - loc[..., None]) / scale[..., None], loc, scale, new_state, raw_scale

    def bounds_of_sums(self, weight_sum: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`_global_scale_bounds` from running sums (the global variance is ``m2 / count``)."""
        if not self.stabilize_with_global:
            inf = torch.full_like(weight_sum, torch.inf)
            return torch.zeros_like(inf), inf
        global_scale = torch.sqrt(m2 / weight_sum.clamp_min(1.0) + self.minimum_scale)
        factor = 10.0**self.scale_factor_exponent
        return (global_scale / factor).clamp_min(self.minimum_scale), global_scale * factor

    def raw_patch_scales(
        self, x: Float[Tensor, "batch variate time"], observed: Bool[Tensor, "batch variate time"]
    ) -> Float[Tensor, "batch variate patches"]:
        """Each patch's scale before clamping (float64), from the statistics at its last step."""
        weight_sum, _, _, m2 = _causal_moments(x.to(torch.float64), observed.to(torch.float64))
        end = slice(self.patch_size - 1, None, self.patch_size)
        return torch.sqrt(_causal_variance(weight_sum[..., end], m2[..., end], bessel=True) + self.minimum_scale)

    def _loc_scale(self, weight_sum: Tensor, mean: Tensor, m2: Tensor, min_scale: Tensor, max_scale: Tensor):
        variance = _causal_variance(weight_sum, m2, bessel=True)
        scale = torch.sqrt(variance + self.minimum_scale)
        return mean, torch.minimum(torch.maximum(scale, min_scale), max_scale)

    def _bounds(self, x64: Tensor, w: Tensor, prefix_length: int) -> tuple[Tensor, Tensor]:
        if not self.stabilize_with_global:
            inf = torch.full(x64.shape[:-1], torch.inf, dtype=torch.float64, device=x64.device)
            return torch.zeros_like(inf), inf
        return _global_scale_bounds(x64, w, prefix_length, self.minimum_scale, self.scale_factor_exponent)


# --------------------------------------------------------------------------- upstream-compatible API


def _check_scaler_inputs(data: Tensor, padding_mask: Tensor, weights: Tensor, prefix_length: int | None) -> None:
    # Upstream only asserts on ``weights``; a padding mask of another shape would broadcast silently.
    if not torch.is_floating_point(data):
        raise TypeError(f"data must be a floating-point tensor, got {data.dtype}")
    if data.dim() != 3:
        raise ValueError(f"data must have shape [batch, variate, time], got {tuple(data.shape)}")
    for name, tensor in (("padding_mask", padding_mask), ("weights", weights)):
        if tensor.shape != data.shape:
            raise ValueError(f"{name} must have data's shape {tuple(data.shape)}, got {tuple(tensor.shape)}")
    if prefix_length is not None and (isinstance(prefix_length, bool) or not isinstance(prefix_length, int)):
        raise TypeError(f"prefix_length must be an int or None, got {type(prefix_length).__name__}")
    if prefix_length is not None and prefix_length < 0:
        raise ValueError(f"prefix_length must be >= 0, got {prefix_length}")


class _UpstreamCausalScaler(nn.Module):
    """Constructor arguments and per-step statistics shared by the upstream-compatible scalers."""

    def __init__(
        self,
        dim: int,
        minimum_scale: float,
        use_bessel_correction: bool,
        stabilize_with_global: bool,
        scale_factor_exponent: float,
    ) -> None:
        super().__init__()
        if dim != -1:
            raise ValueError(f"dim must be -1 (the time axis), got {dim}")
        if minimum_scale < 0:
            raise ValueError(f"minimum_scale must be >= 0, got {minimum_scale}")
        self.dim = dim
        self.minimum_scale = minimum_scale
        self.use_bessel_correction = use_bessel_correction
        self.stabilize_with_global = stabilize_with_global
        self.scale_factor_exponent = scale_factor_exponent

    @torch.no_grad()  # like upstream, the statistics are constants for autograd
    def _statistics(
        self, data: Tensor, padding_mask: Tensor, weights: Tensor, prefix_length: int | None
    ) -> tuple[Tensor, Tensor]:
        """Causal ``(loc, scale)`` at every step, in ``data``'s dtype (computed in float64)."""
        _check_scaler_inputs(data, padding_mask, weights, prefix_length)
        x64 = data.to(torch.float64)
        w = weights.to(torch.float64) * padding_mask.to(torch.float64)
        weight_sum, _, mean, m2 = _causal_moments(x64, w)
        variance = _causal_variance(weight_sum, m2, self.use_bessel_correction)
        scale = torch.sqrt(variance + self.minimum_scale)
        if self.stabilize_with_global:
            prefix = data.shape[-1] if prefix_length is None else prefix_length
            low, high = _global_scale_bounds(x64, w, prefix, self.minimum_scale, self.scale_factor_exponent)
            scale = torch.minimum(torch.maximum(scale, low[..., None]), high[..., None])
        return mean.to(data.dtype), scale.to(data.dtype)


class CausalStdMeanScaler(_UpstreamCausalScaler):
    """Upstream's per-step causal scaler: step ``t`` uses the weighted mean and std of steps ``<= t``.

    ``scale = sqrt(variance + minimum_scale)``; the variance divides by the
    weight count minus one when ``use_bessel_correction`` (both clamped to 1).
    With ``stabilize_with_global`` the scale is clamped to within
    ``10**scale_factor_exponent`` of the global scale of the first
    ``prefix_length`` steps (all steps by default), and to at least ``minimum_scale``.
    """

    def __init__(
        self,
        dim: int = -1,
        minimum_scale: float = 0.1,
        use_bessel_correction: bool = True,
        stabilize_with_global: bool = False,
        scale_factor_exponent: float = 10.0,
    ) -> None:
        super().__init__(dim, minimum_scale, use_bessel_correction, stabilize_with_global, scale_factor_exponent)

    def forward(
        self,
        data: Float[Tensor, "batch variate time"],
        padding_mask: Tensor,
        weights: Tensor,
        prefix_length: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(scaled, loc, scale)``, each shaped like ``data``; padded steps carry no weight."""
        loc, scale = self._statistics(data, padding_mask, weights, prefix_length)
        return (data - loc) / scale, loc, scale


class CausalPatchStdMeanScaler(_UpstreamCausalScaler):
    """Upstream's patch-wise causal scaler: every step of a patch uses the statistics at the patch's last step.

    Statistics are those of :class:`CausalStdMeanScaler`; ``data``'s time length
    must be a multiple of ``patch_size``.
    """

    def __init__(
        self,
        dim: int = -1,
        patch_size: int = 32,
        minimum_scale: float = 0.1,
        use_bessel_correction: bool = True,
        stabilize_with_global: bool = False,
        scale_factor_exponent: float = 10.0,
    ) -> None:
        super().__init__(dim, minimum_scale, use_bessel_correction, stabilize_with_global, scale_factor_exponent)
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        self.patch_size = patch_size

    def forward(
        self,
        data: Float[Tensor, "batch variate time"],
        padding_mask: Tensor,
        weights: Tensor,
        prefix_length: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(scaled, loc, scale)``, each shaped like ``data``; loc/scale are constant within a patch."""
        if data.dim() == 3 and data.shape[-1] % self.patch_size:
            raise ValueError(f"data's time length {data.shape[-1]} is not a multiple of patch_size {self.patch_size}")
        loc, scale = self._statistics(data, padding_mask, weights, prefix_length)
        end = slice(self.patch_size - 1, None, self.patch_size)  # last step of each patch
        loc, scale = (_spread_over_patch(t[..., end], self.patch_size) for t in (loc, scale))
        return (data - loc) / scale, loc, scale
