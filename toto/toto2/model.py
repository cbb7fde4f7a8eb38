"""Toto 2.0: patch embedding, alternating time/variate transformer, quantile head, causal scaler.

Parameter names follow ``Toto2Model``'s state dict, so its ``model.safetensors`` loads unchanged.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce, repeat
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .attention import Attention, LayerCache, Rotation, rotation
from .config import QUANTILE_LEVELS, Toto2Config
from .layers import FeedForward, ResidualMLP, RMSNorm, residual_add, transformer_taus

MINIMUM_SCALE = 1e-6


class Layer(nn.Module):
    def __init__(self, config: Toto2Config, over_time: bool, attn_tau: float, mlp_tau: float):
        super().__init__()
        self.over_time = over_time
        self.attn = Attention(config, over_time)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.mlp_bias)
        self.norm1 = RMSNorm(config.d_model, config.norm_eps, config.norm_include_weight)
        self.norm2 = RMSNorm(config.d_model, config.norm_eps, config.norm_include_weight)
        # Stored in the checkpoint; loaded from it rather than recomputed.
        self.register_buffer("attn_tau", torch.tensor(attn_tau))
        self.register_buffer("mlp_tau", torch.tensor(mlp_tau))

    def forward(
        self, x: Tensor, mask: Tensor | None, turn: Rotation | None = None, cache: LayerCache | None = None,
        tail: int | None = None,
    ) -> Tensor:
        """``tail``: the outputs of the last ``tail`` tokens only (the others still give keys)."""
        attended = self.attn(self.norm1(x), mask, turn, cache, tail)
        x = residual_add(attended, x if tail is None else x[..., -tail:, :], self.attn_tau)
        return residual_add(self.ffn(self.norm2(x)), x, self.mlp_tau)


class Transformer(nn.Module):
    def __init__(self, config: Toto2Config):
        super().__init__()
        self.config = config
        taus = transformer_taus(config.num_layers, config.residual_mult, config.residual_attn_ratio)
        self.layers = nn.ModuleList(
            Layer(config, not config.is_variate_layer(i), *taus[i]) for i in range(config.num_layers)
        )
        self.out_norm = RMSNorm(config.d_model, config.norm_eps, config.norm_include_weight)
        self.last_time_layer = max((i for i in range(config.num_layers) if not config.is_variate_layer(i)), default=-1)

    def forward(
        self,
        x: Float[Tensor, "batch variate seq dim"],
        time_mask: Bool[Tensor, "rows 1 seq keys"] | None,
        variate_mask: Bool[Tensor, "positions 1 variate variate"] | None,
        turn: Rotation,
        caches: list[tuple[Tensor, Tensor]] | None = None,
        slots: Int[Tensor, " seq"] | None = None,
        outputs: int | None = None,
    ) -> Float[Tensor, "batch variate outputs dim"]:
        """``caches``: each time layer's (keys, values) buffers, written at ``slots``.

        ``outputs``: return the last ``outputs`` tokens only. From the last time layer on, the
        other tokens are not computed (their keys still are): nothing after it reads them."""
        batch, variates, seq, _ = x.shape
        x = rearrange(x, "batch variate seq dim -> (batch variate) seq dim")
        time_layer = 0
        for index, layer in enumerate(self.layers):
            if layer.over_time:
                cache = LayerCache(*caches[time_layer], slots) if caches is not None else None
                if outputs is not None and index == self.last_time_layer:
                    assert time_mask is not None, "outputs needs an explicit time mask"
                    x = layer(x, time_mask[..., -outputs:, :], turn, cache, tail=outputs)
                    if variate_mask is not None:
                        variate_mask = variate_mask.unflatten(0, (batch, seq))[:, -outputs:].flatten(0, 1)
                    seq = outputs
                else:
                    x = layer(x, time_mask, turn, cache)
                time_layer += 1
            else:
                x = rearrange(x, "(batch variate) seq dim -> (batch seq) variate dim", variate=variates)
                x = layer(x, variate_mask)
                x = rearrange(x, "(batch seq) variate dim -> (batch variate) seq dim", seq=seq)
        return self.out_norm(x.unflatten(0, (batch, variates)))


class QuantileHead(nn.Module):
    """Quantiles at ``QUANTILE_LEVELS`` for the ``values`` steps after each patch."""

    def __init__(self, d_model: int, values: int):
        super().__init__()
        self.values = values
        self.param_projection = nn.Module()  # the nesting spells upstream's parameter names
        self.param_projection.proj = ResidualMLP(d_model, 4 * d_model, values * len(QUANTILE_LEVELS), readout=True)

    def forward(self, x: Float[Tensor, "... dim"]) -> Float[Tensor, "... values quantile"]:
        return self.param_projection.proj(x).unflatten(-1, (self.values, len(QUANTILE_LEVELS)))


def patch_statistics(
    values: Float[Tensor, "... time"], observed: Bool[Tensor, "... time"], patch_size: int
) -> tuple[Float[Tensor, "... patch"], Float[Tensor, "... patch"]]:
    """Causal mean and standard deviation (Bessel-corrected) through the end of each patch, in
    float64 (float32 where the device has none), returned in ``values``' dtype."""
    wide = torch.float32 if values.device.type == "mps" else torch.float64
    data, mask = values.to(wide), observed.to(wide)
    count = mask.cumsum(-1).clamp_min(1)
    mean = (data * mask).cumsum(-1) / count
    previous = torch.cat((torch.zeros_like(mean[..., :1]), mean[..., :-1]), -1)
    m2 = ((data - previous) * (data - mean) * mask).cumsum(-1)  # Welford's recurrence, summed
    std = (m2 / (count - 1).clamp(min=1)).sqrt().clamp(min=MINIMUM_SCALE)
    last = slice(patch_size - 1, None, patch_size)
    return mean[..., last].to(values.dtype), std[..., last].to(values.dtype)


def scaled_patches(
    values: Float[Tensor, "... time"], observed: Bool[Tensor, "... time"], loc: Tensor, scale: Tensor, patch_size: int
) -> Float[Tensor, "... patch step"]:
    """asinh((x - loc) / scale) per patch, 0 where not observed."""
    x = rearrange(values, "... (patch step) -> ... patch step", step=patch_size)
    mask = rearrange(observed, "... (patch step) -> ... patch step", step=patch_size)
    return torch.where(mask, (x - loc[..., None]) / scale[..., None], 0.0).asinh()


class Toto2Model(nn.Module):
    def __init__(self, config: Toto2Config):
        super().__init__()
        self.config = config
        patch, d_model = config.patch_size, config.d_model
        self.patch_proj = ResidualMLP(2 * patch, 4 * d_model, d_model)
        self.transformer = Transformer(config)
        self.output_head = QuantileHead(d_model, patch * config.num_output_patches)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def device(self) -> torch.device:
        return self.patch_proj.linear1.weight.device

    def embed(self, scaled: Float[Tensor, "... patch step"], observed: Bool[Tensor, "... patch step"]) -> Tensor:
        """One token per patch from its scaled values and its missing-value indicator."""
        return self.patch_proj(torch.cat((scaled, (~observed).to(scaled.dtype)), -1))

    def forward(
        self,
        target: Float[Tensor, "batch variate time"],
        target_mask: Bool[Tensor, "batch variate time"],
        series_ids: Int[Tensor, "batch variate"] | None = None,
    ) -> tuple[Float[Tensor, "quantile batch variate patch values"], Tensor, Tensor]:
        """One teacher-forced pass (training, scoring): each patch's output forecasts the next
        ``patch_size * num_output_patches`` steps. Returns quantiles (in scaled units: apply
        ``sinh``, then the patch's scale and loc) and each patch's loc and scale."""
        patch = self.config.patch_size
        loc, scale = patch_statistics(target, target_mask, patch)
        x = self.embed(
            scaled_patches(target, target_mask, loc, scale, patch),
            rearrange(target_mask, "... (patch step) -> ... patch step", step=patch),
        )
        if series_ids is None:
            series_ids = torch.zeros(target.shape[:-1], dtype=torch.long, device=target.device)
        groups = repeat(series_ids, "batch variate -> batch variate patch", patch=x.shape[-2]).clone()
        groups[reduce(target_mask, "... (patch step) -> ... patch", "sum", step=patch) == 0] = -1
        seq = x.shape[-2]
        positions = torch.arange(seq, device=x.device)
        # xPos centre: upstream's (last position + 1) // 2 of the call.
        turn = rotation(positions, seq // 2, self.config.qk_dim // 2, self.config.use_xpos)
        time_mask, variate_mask = group_masks(groups, positions, positions)
        hidden = self.transformer(x, time_mask, variate_mask, turn)
        return rearrange(self.output_head(hidden), "... quantile -> quantile ..."), loc, scale


def group_masks(
    groups: Int[Tensor, "batch variate keys"], query_slots: Int[Tensor, " seq"], key_slots: Int[Tensor, " keys"]
) -> tuple[Bool[Tensor, "rows 1 seq keys"], Bool[Tensor, "positions 1 variate variate"] | None]:
    """Attention masks from group ids (-1: a patch with no observed value).

    Over time: causal, and only between tokens of one group, so no observed token sees a
    missing patch. Across variates (at each query position): only within one group.
    """
    batch, variates, _ = groups.shape
    query_groups = groups.index_select(-1, query_slots)
    same = query_groups[..., :, None] == groups[..., None, :]
    causal = key_slots[None, :] <= query_slots[:, None]
    time_mask = rearrange(same & causal, "batch variate seq keys -> (batch variate) 1 seq keys")
    if variates == 1:
        return time_mask, None
    across = rearrange(query_groups, "batch variate seq -> batch seq variate")
    variate_mask = rearrange(across[..., :, None] == across[..., None, :], "batch seq a b -> (batch seq) 1 a b")
    return time_mask, variate_mask
