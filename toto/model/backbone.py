"""The Toto network: scaler -> patch embedding -> transformer -> Student-T mixture head."""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from ..config import TotoConfig
from .distribution import MixtureOfStudentT, MixtureOfStudentTsOutput
from .kv_cache import KVCache, PrefixedCache
from .layers import PatchEmbedding
from .scaler import CausalPatchScaler
from .transformer import Transformer


class TotoOutput(NamedTuple):
    """Distribution in the *scaled* space, plus the loc/scale that map it back to data."""

    distribution: MixtureOfStudentT
    loc: Float[Tensor, "batch variate time"]
    scale: Float[Tensor, "batch variate time"]


class TotoBackbone(nn.Module):
    def __init__(self, config: TotoConfig):
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.embed_dim = config.embed_dim
        self.scaler = CausalPatchScaler(
            config.patch_size,
            stabilize_with_global=config.stabilize_with_global,
            scale_factor_exponent=config.scale_factor_exponent,
        )
        self.patch_embed = PatchEmbedding(config.patch_size, config.stride, config.embed_dim)
        self.transformer = Transformer(config)
        self.unembed = nn.Linear(config.embed_dim, config.embed_dim * config.patch_size)
        self.output_distribution = MixtureOfStudentTsOutput(config.embed_dim, config.k_components)

    @property
    def device(self) -> torch.device:
        return self.unembed.weight.device

    def allocate_kv_cache(
        self,
        batch_size: int,
        num_variates: int,
        max_time_steps: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A cache for ``batch_size * num_variates`` rows and up to ``max_time_steps`` steps."""
        return KVCache(
            num_time_layers=self.transformer.num_time_layers,
            rows=batch_size * num_variates,
            num_heads=self.config.num_heads,
            head_dim=self.config.head_dim,
            capacity=-(-max_time_steps // self.patch_size),
            device=device if device is not None else self.device,
            dtype=dtype if dtype is not None else self.unembed.weight.dtype,
        )

    def encode(
        self,
        scaled: Float[Tensor, "batch variate time"],
        id_patches: Int[Tensor, "batch variate patches"],
        positions: Int[Tensor, " patches"],
        cache: KVCache | PrefixedCache | None = None,
        last: Int[Tensor, ""] | None = None,
    ) -> Float[Tensor, "batch variate patches embed"]:
        """Run scaled patches through the transformer at time ``positions`` (writing ``cache``).

        ``last``: the last real position, when the patches after it are padding.
        """
        embedded = self.patch_embed(scaled.to(self.unembed.weight.dtype))
        return self.transformer(embedded, id_patches, positions, cache, last)

    def head(self, hidden: Float[Tensor, "batch variate patches embed"]) -> MixtureOfStudentT:
        """Per-step mixture for the patch *after* each input patch, in the scaled space."""
        features = self.unembed(hidden).unflatten(-1, (self.patch_size, self.embed_dim))
        return self.output_distribution(features.flatten(2, 3))

    def id_patches(self, id_mask: Tensor, like: Tensor) -> Int[Tensor, "batch variate patches"]:
        """One id per patch (its minimum, as upstream); ``id_mask`` may broadcast over variates or time."""
        return id_mask.expand_as(like).unflatten(-1, (-1, self.patch_size)).amin(-1)

    def forward(
        self,
        inputs: Float[Tensor, "batch variate time"],
        input_padding_mask: Bool[Tensor, "batch variate time"],
        id_mask: Int[Tensor, "batch #variate #time"],
        kv_cache: KVCache | None = None,
        scaling_prefix_length: int | None = None,
    ) -> TotoOutput:
        """Upstream-compatible forward over a whole (padded) series.

        With ``kv_cache``, the first call processes every patch and later calls
        pass the grown series but only its newest patch is encoded, exactly as
        upstream's ``TotoBackbone.forward``. The scaler always sees the whole
        series, with global statistics from its first ``scaling_prefix_length`` steps.
        """
        if inputs.shape[-1] % self.patch_size:
            raise ValueError(
                f"inputs: length {inputs.shape[-1]} is not a multiple of patch_size {self.patch_size}; "
                "left-pad it (toto.data.util.dataset.pad_array)"
            )
        scaled, loc, scale, _ = self.scaler(inputs, input_padding_mask, scaling_prefix_length)
        ids = self.id_patches(id_mask, inputs)
        num_patches = ids.shape[-1]
        if kv_cache is None:
            positions = torch.arange(num_patches, device=inputs.device)
        else:
            positions = _claim_positions(kv_cache, num_patches)
            new = positions.shape[0]
            scaled, ids = scaled[..., (num_patches - new) * self.patch_size :], ids[..., num_patches - new :]
        return TotoOutput(self.head(self.encode(scaled, ids, positions, kv_cache)), loc, scale)


@torch.compiler.disable
def _claim_positions(cache: KVCache, num_patches: int) -> Tensor:
    """Positions of the patches not yet in ``cache``: all of them at first, then exactly one per call."""
    new = num_patches - cache.length
    if cache.length and new != 1:
        raise ValueError(
            f"kv_cache holds {cache.length} patches but inputs have {num_patches}: "
            "after the first call, pass the series grown by exactly one patch"
        )
    return cache.reserve(new)
