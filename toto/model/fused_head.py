"""The output head with the unembedding folded in: one matrix product per patch instead of two.

``unembed`` (embed -> patch x embed) and the four embed -> k projections are both affine, so
their composition is one embed -> patch x 4k map: 4.7M weights instead of 42M at the published
size. It is folded in float64 from the current weights (so it differs only by rounding) and
refolded whenever one of them changes (:meth:`FusedHead.refresh`, host-side, before every forecast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from .distribution import MixtureOfStudentT, MixtureOfStudentTsOutput
from .layers import column_major


class FusedHead(nn.Module):
    """``unembed`` then ``output_distribution`` as one linear map; buffers only, never saved."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", None, persistent=False)  # [patch * 4 * k, embed]
        self.register_buffer("bias", None, persistent=False)  # [patch * 4 * k]
        self._stamp: tuple | None = None  # the source weights the buffers were folded from

    @torch.no_grad()
    def refresh(self, unembed: nn.Linear, output: MixtureOfStudentTsOutput, patch_size: int) -> None:
        """Fold the current weights, unless the buffers already hold their fold."""
        sources = [unembed.weight, unembed.bias, *(t for p in output.projections() for t in (p.weight, p.bias))]
        stamp = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        if stamp == self._stamp and self.weight is not None:
            return
        like = unembed.weight
        heads = torch.cat([p.weight for p in output.projections()]).double()  # [4k, step embed]
        head_bias = torch.cat([p.bias for p in output.projections()]).double()
        step_bias = unembed.bias.double().unflatten(0, (patch_size, -1))  # [patch, step embed]
        bias = (step_bias @ heads.T + head_bias).reshape(-1).to(like.dtype)
        # One step's block at a time: a float64 copy of all of unembed would be 300 MB at full size.
        weight = torch.cat([heads @ block.double() for block in like.unflatten(0, (patch_size, -1))]).to(like.dtype)
        weight = column_major(weight)  # as the loader lays out Linear weights
        if self.weight is not None and self.weight.shape == weight.shape and self.weight.dtype == weight.dtype \
                and self.weight.device == weight.device and self.weight.stride() == weight.stride():
            self.weight.copy_(weight)  # in place: compiled graphs and CUDA graphs keep their addresses
            self.bias.copy_(bias)
        else:
            self.weight, self.bias = weight, bias
        self._stamp = stamp

    def forward(
        self, hidden: Float[Tensor, "batch variate seq embed"], patch_size: int
    ) -> MixtureOfStudentT:
        """The mixture of every step of the patch after each hidden state: ``[batch, variate, seq * patch]``."""
        if self.weight is None:
            raise RuntimeError("FusedHead.refresh() must run before the fused head is used")
        # "batch variate seq (step projection k) -> projection batch variate (seq step) k", as refresh
        # folds the rows; torch, not einops: this runs every decode step.
        raw = F.linear(hidden, self.weight, self.bias).unflatten(-1, (patch_size, 4, -1)).flatten(2, 3)
        return MixtureOfStudentTsOutput.mixture(*raw.unbind(-2))
