"""Toto's causal patch scaler, in the full-sequence form and the one-patch-at-a-time form.

Statistics run in float64 (series such as prices at 3e4 lose digits in float32):
causal mean and Welford M2 via cumulative sums, Bessel-corrected variance,
``scale = sqrt(var + 0.1)``, optionally clamped to
``[max(0.1, g * 10**-e), g * 10**e]`` where ``g`` is the global scale of the
first ``prefix_length`` steps (the context). Each patch is scaled by the
statistics at its *last* step.

The running sums after the context form a :class:`ScalerState`, so decoding
scales only the new patch yet reproduces the full-sequence values.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn


class ScalerState(NamedTuple):
    """Running float64 sums after the last scaled step, each ``[batch, variate]``."""

    weight_sum: Tensor
    value_sum: Tensor
    m2: Tensor
    min_scale: Tensor  # clamp bounds from the context's global statistics
    max_scale: Tensor



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
        weight_sum = torch.cumsum(w, dim=-1)
        value_sum = torch.cumsum(w * x64, dim=-1)
        mean = value_sum / weight_sum.clamp_min(1.0)
        previous_mean = F.pad(mean[..., :-1], (1, 0))
        m2 = torch.cumsum((x64 - previous_mean) * (x64 - mean) * w, dim=-1)

        min_scale, max_scale = self._bounds(x64, w, x.shape[-1] if prefix_length is None else prefix_length)
        end = slice(self.patch_size - 1, None, self.patch_size)  # last step of each patch
        loc, scale = self._loc_scale(weight_sum[..., end], mean[..., end], m2[..., end], min_scale[..., None], max_scale[..., None])
        loc = loc.to(x.dtype).repeat_interleave(self.patch_size, dim=-1)
        scale = scale.to(x.dtype).repeat_interleave(self.patch_size, dim=-1)
        state = ScalerState(weight_sum[..., -1], value_sum[..., -1], m2[..., -1], min_scale, max_scale)
        return (x - loc) / scale, loc, scale, state

    def step(
        self, state: ScalerState, patch: Float[Tensor, "batch variate patch"]
    ) -> tuple[Tensor, Tensor, Tensor, ScalerState]:
        """Scale one fully observed patch; returns ``(scaled, loc, scale, new_state)``, loc/scale ``[batch, variate]``."""
        x64 = patch.to(torch.float64)
        steps = torch.arange(1, patch.shape[-1] + 1, device=patch.device, dtype=torch.float64)
        weight_sum = state.weight_sum[..., None] + steps
        value_sum = state.value_sum[..., None] + torch.cumsum(x64, dim=-1)
        mean = value_sum / weight_sum.clamp_min(1.0)
        start_mean = (state.value_sum / state.weight_sum.clamp_min(1.0))[..., None]
        previous_mean = torch.cat((start_mean, mean[..., :-1]), dim=-1)
        m2 = state.m2[..., None] + torch.cumsum((x64 - previous_mean) * (x64 - mean), dim=-1)

        new_state = ScalerState(weight_sum[..., -1], value_sum[..., -1], m2[..., -1], state.min_scale, state.max_scale)
        loc, scale = self._loc_scale(new_state.weight_sum, mean[..., -1], new_state.m2, state.min_scale, state.max_scale)
        loc, scale = loc.to(patch.dtype), scale.to(patch.dtype)
        return (patch - loc[..., None]) / scale[..., None], loc, scale, new_state

    def _loc_scale(self, weight_sum: Tensor, mean: Tensor, m2: Tensor, min_scale: Tensor, max_scale: Tensor):
        variance = m2 / (weight_sum.clamp_min(1.0) - 1.0).clamp_min(1.0)
        scale = torch.sqrt(variance + self.minimum_scale)
        return mean, torch.minimum(torch.maximum(scale, min_scale), max_scale)

    def _bounds(self, x64: Tensor, w: Tensor, prefix_length: int) -> tuple[Tensor, Tensor]:
        if not self.stabilize_with_global:
            inf = torch.full(x64.shape[:-1], torch.inf, dtype=torch.float64, device=x64.device)
            return torch.zeros_like(inf), inf
        x64, w = x64[..., :prefix_length], w[..., :prefix_length]
        count = w.sum(-1).clamp_min(1.0)
        mean = torch.nan_to_num((w * x64).sum(-1) / count)
        variance = (((x64 - mean[..., None]) * w) ** 2).sum(-1) / count
        global_scale = torch.sqrt(variance + self.minimum_scale)
        factor = 10.0**self.scale_factor_exponent
        return (global_scale / factor).clamp_min(self.minimum_scale), global_scale * factor
