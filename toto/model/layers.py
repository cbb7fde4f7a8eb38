"""Small building blocks: RMSNorm, the SwiGLU feed-forward, the patch embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale. The weight is named ``scale``, as in the checkpoint."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Float[Tensor, "... dim"]) -> Float[Tensor, "... dim"]:
        return x / torch.sqrt(torch.mean(x * x, dim=-1, keepdim=True) + self.eps) * self.scale


class SwiGLU(nn.Module):
    """silu(gate) * value, with the gate in the *first* half (xFormers' fused layout)."""

    def forward(self, x: Tensor) -> Tensor:
        gate, value = x.chunk(2, dim=-1)
        return F.silu(gate) * value


def swiglu_mlp(embed_dim: int, hidden_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """Feed-forward block; parameter names ``0.*`` and ``2.*`` match upstream's unfused spelling.

    ``dropout`` acts on its output in training mode only, as upstream's.
    """
    return nn.Sequential(
        nn.Linear(embed_dim, 2 * hidden_dim), SwiGLU(), nn.Linear(hidden_dim, embed_dim), nn.Dropout(dropout)
    )


class PatchEmbedding(nn.Module):
    """Cuts each variate into non-overlapping patches and projects each patch to ``embed_dim``."""

    def __init__(self, patch_size: int, stride: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.stride = stride
        self.projection = nn.Linear(patch_size, embed_dim)

    def forward(self, x: Float[Tensor, "batch variate time"]) -> Float[Tensor, "batch variate patches embed"]:
        # "... (patches step) -> ... patches step"; torch, not einops: this runs every decode step.
        return self.projection(x.unflatten(-1, (-1, self.patch_size)))


def column_major(weight: Tensor) -> Tensor:
    """A CPU float32 weight stored column-major (same values); any other weight as it is.

    ``F.linear`` then hands MKL an untransposed right operand, which it multiplies about
    1.3x faster at a few rows and no slower at many (measured on a 2-core AVX-512 machine;
    bfloat16 at one row got slower, hence float32 only).
    """
    if weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.is_contiguous():
        return weight.t().contiguous().t()
    return weight


def column_major_linear_weights(model: torch.nn.Module) -> None:
    """On CPU, store float32 ``nn.Linear`` weights column-major (:func:`column_major`).

    A prefill of one series (all of S1's matrix products) gains the most. ``state_dict()``
    then holds non-contiguous tensors: call ``.contiguous()`` before writing them with
    safetensors.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = column_major(module.weight.data)
