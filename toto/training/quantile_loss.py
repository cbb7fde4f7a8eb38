"""Fine-tuning a quantile model (Toto 2.0): the pinball loss over its knots.

Each patch's output forecasts the next patch. The targets are put on the scale the
forecasts are decoded from: asinh((x - loc) / scale) with the causal loc and scale of the
patch that forecasts them (what a forecast's next patch is decoded with). Upstream ships
no training code; its technical report could not be read here, so this is our choice,
documented in docs/TOTO2.md, not a claim about how Datadog trained it.
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from ..toto2.config import QUANTILE_LEVELS
from ..toto2.model import Toto2Model
from .step import WindowLoss


def pinball(
    quantiles: Float[Tensor, "quantile *shape"], target: Float[Tensor, "*shape"], levels: Float[Tensor, " quantile"]
) -> Float[Tensor, "*shape"]:
    """The quantile (pinball) loss averaged over the levels: tau * (y - q) above q, (1 - tau) * (q - y) below."""
    levels = levels.reshape(-1, *([1] * target.dim()))
    error = target - quantiles
    return torch.maximum(levels * error, (levels - 1) * error).mean(0)


class QuantileWindowLoss(WindowLoss):
    """``(sum of the pinball loss over scored steps, their count)`` for a batch of windows:
    :class:`~toto.training.step.WindowLoss` with Toto 2.0's model and loss."""

    def __init__(self, model: Toto2Model, autocast_dtype: torch.dtype | None = None):
        super().__init__(model, 0, autocast_dtype)  # type: ignore[arg-type]
        self.register_buffer("levels", torch.tensor(QUANTILE_LEVELS), persistent=False)

    def _terms(self, series: Tensor, observed: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
        patch = self.backbone.patch_size
        context, targets = series[..., :-patch], series[..., patch:]
        with torch.autocast(series.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
            quantiles, loc, scale = self.backbone(context, observed[..., :-patch])
        quantiles = quantiles[..., :patch].float()  # the next patch (of num_output_patches)
        steps = rearrange(targets, "batch variate (patch step) -> batch variate patch step", step=patch)
        scaled = torch.asinh((steps - loc[..., None]) / scale[..., None])
        losses = rearrange(pinball(quantiles, scaled, self.levels.to(scaled)), "b v patch step -> b v (patch step)")
        return torch.where(loss_mask, losses, 0.0).sum(), loss_mask.sum()


def toto2_trainable_parameters(model: Toto2Model, trainable: str | int) -> list[nn.Parameter]:
    """Freeze all but ``trainable``: ``"all"``, ``"head"`` (the output head), or an int N (the
    last N transformer layers, the output norm and the head)."""
    layers = list(model.transformer.layers)
    if trainable == "all":
        chosen: list[nn.Module] = [model]
    else:
        last = 0 if trainable == "head" else int(trainable)
        if last > len(layers):
            raise ValueError(f"trainable={trainable}: the model has {len(layers)} layers")
        chosen = [model.output_head, model.transformer.out_norm, *layers[len(layers) - last :]]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in chosen:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]
