"""Toto 2.0's building blocks with u-muP's forward scale factors written in as constants.

u-muP (unit scaling) multiplies each op's output by a fixed factor; the backward-only factors
do not change the forward pass and are left out. The factors below are those of
``unit_scaling`` 0.3.5 / ``dd-unit-scaling`` 0.1.0 at the settings Toto 2.0 uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

# unit_scaling's silu at mult=1: a log-interpolation between 2 and sqrt(2 / (1 - 1/pi)) at 0.8.
SILU_SCALE = math.exp(0.8 * math.log((2 / (1 - 1 / math.pi)) ** 0.5) + 0.2 * math.log(2.0))


class UnitLinear(nn.Linear):
    """``F.linear`` times fan_in ** -0.5 (hidden layers) or fan_in ** -1 (``readout``); the bias
    is scaled with the product, as upstream's scale is applied to the layer's output."""

    def __init__(self, in_features: int, out_features: int, bias: bool, readout: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.output_scale = in_features ** (-1.0 if readout else -0.5)

    def reset_parameters(self) -> None:  # unit scaling: unit-variance weights, zero biases
        nn.init.normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) * self.output_scale


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps), the mean in float32; an optional weight (``include_weight``)."""

    def __init__(self, dim: int, eps: float, include_weight: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if include_weight else None

    def forward(self, x: Float[Tensor, "... dim"]) -> Float[Tensor, "... dim"]:
        rms = (x.float().pow(2).mean(-1, keepdim=True) + self.eps).sqrt().to(x.dtype)
        y = x / rms
        return y * self.weight if self.weight is not None else y


def residual_add(residual: Tensor, skip: Tensor, tau: Tensor | float) -> Tensor:
    """u-muP's residual sum: tau / sqrt(1 + tau^2) of the branch plus 1 / sqrt(1 + tau^2) of the skip."""
    denominator = (1 + tau**2) ** 0.5
    return (tau / denominator) * residual + (1 / denominator) * skip


def transformer_taus(num_layers: int, residual_mult: float, residual_attn_ratio: float) -> list[tuple[float, float]]:
    """(attention tau, feed-forward tau) of each layer: u-muP's transformer residual rule
    (the u-muP paper, appendix G), which the checkpoint also stores as buffers."""
    alpha_mlp = residual_mult * (2 / (1 + residual_attn_ratio**2)) ** 0.5
    alpha_attn = residual_attn_ratio * alpha_mlp
    depth = 2 * num_layers

    def tau(index: int) -> float:
        n_attn, n_mlp = (index + 1) // 2, index // 2
        alpha = alpha_attn if index % 2 == 0 else alpha_mlp
        return alpha / (depth / 2 + n_attn * alpha_attn**2 + n_mlp * alpha_mlp**2) ** 0.5

    return [(tau(2 * i), tau(2 * i + 1)) for i in range(num_layers)]


class ResidualMLP(nn.Module):
    """(linear2(silu(linear1(x))) + skip_proj(x)) / sqrt(2): the patch embedding and the output head.

    The output head (``readout``) scales its two last projections by 1 / fan_in."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, readout: bool = False):
        super().__init__()
        self.linear1 = UnitLinear(in_dim, hidden_dim, bias=True)
        self.linear2 = UnitLinear(hidden_dim, out_dim, bias=True, readout=readout)
        self.skip_proj = UnitLinear(in_dim, out_dim, bias=True, readout=readout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.silu(self.linear1(x)) * SILU_SCALE
        return residual_add(self.linear2(hidden), self.skip_proj(x), 1.0)


class FeedForward(nn.Module):
    """SwiGLU: the *first* half of fc1's output gates silu of the second half."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool):
        super().__init__()
        self.fc1 = UnitLinear(dim, 2 * hidden_dim, bias=bias)
        self.fc2 = UnitLinear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(gate * F.silu(value))


class PerDimScale(nn.Module):
    """Scales each query dimension by softplus(p) / ln 2 (1 at p = 0)."""

    def __init__(self, dim: int):
        super().__init__()
        self.per_dim_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * (F.softplus(self.per_dim_scale) / math.log(2.0)).to(x.dtype)
