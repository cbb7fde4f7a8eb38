"""The Toto network: scaler -> patch embedding -> transformer -> Student-T mixture head."""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange, reduce, repeat
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from ..config import TotoConfig
from ..arguments import check_num_exogenous
from .attention import LeadingPadding
from .distribution import MixtureOfStudentT, MixtureOfStudentTsOutput
from .fused_head import FusedHead
from .fusion import Fusion
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
        self.transformer = Transformer(
            num_layers=config.num_layers,
            embed_dim=config.embed_dim,
            num_heads=config.num_heads,
            mlp_hidden_dim=config.mlp_hidden_dim,
            dropout=config.dropout,
            spacewise_every_n_layers=config.spacewise_every_n_layers,
            spacewise_first=config.spacewise_first,
        )
        self.unembed = nn.Linear(config.embed_dim, config.embed_dim * config.patch_size)
        self.output_distribution = MixtureOfStudentTsOutput(config.embed_dim, config.k_components)
        self.fused_head = FusedHead()  # derived from unembed and output_distribution; not in the state dict
        # Variate labels (upstream's enable_variate_labels): off unless a checkpoint holds them.
        self.fusion: Fusion | None = None
        self.num_prepended_tokens = 0  # label tokens before the first patch: time positions shift by this
        self.target_variate_label: nn.Parameter | None = None
        self.exogenous_variate_label: nn.Parameter | None = None

    def enable_variate_labels(self) -> None:
        """Add the target and exogenous label parameters (random until loaded) and prepend them from now on."""
        self.fusion = Fusion()
        self.transformer.fusion = self.fusion
        self.num_prepended_tokens = 1
        like = self.unembed.weight
        self.target_variate_label = nn.Parameter(torch.randn(self.embed_dim, device=like.device, dtype=like.dtype))
        self.exogenous_variate_label = nn.Parameter(torch.randn(self.embed_dim, device=like.device, dtype=like.dtype))

    def variate_label_embeds(
        self, exogenous: Bool[Tensor, " variate"] | None, batch: int, variates: int
    ) -> Float[Tensor, "batch variate 1 embed"]:
        """Each variate's label: the exogenous one where ``exogenous`` (None: no exogenous variates)."""
        if self.target_variate_label is None or self.exogenous_variate_label is None:
            raise ValueError("variate labels are not enabled (enable_variate_labels)")
        labels = self.target_variate_label.expand(variates, -1)
        if exogenous is not None:
            labels = torch.where(exogenous[:, None], self.exogenous_variate_label, labels)
        return repeat(labels, "variate embed -> batch variate 1 embed", batch=batch)

    def build_variate_label_embeds(
        self, num_exogenous_variables: int, embeddings: Float[Tensor, "batch variate seq embed"]
    ) -> Float[Tensor, "batch variate 1 embed"] | None:
        """Upstream's spelling: labels for ``embeddings``' variates, the last ``num_exogenous_variables`` exogenous;
        None if labels are not enabled."""
        if self.fusion is None:
            return None
        batch, variates = embeddings.shape[:2]
        exogenous = exogenous_variates(variates, num_exogenous_variables, embeddings.device)
        return self.variate_label_embeds(exogenous, batch, variates).to(embeddings.dtype)

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
            capacity=-(-max_time_steps // self.patch_size) + self.num_prepended_tokens,
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
        *,
        start: bool = False,
        exogenous: Bool[Tensor, " variate"] | None = None,
        first_real: Int[Tensor, " batch"] | None = None,
        xpos_shift: Int[Tensor, " batch"] | None = None,
    ) -> Float[Tensor, "batch variate patches embed"]:
        """Run scaled patches at patch ``positions`` through the transformer (writing ``cache``).

        ``last``: the last real position, when the patches after it are padding.
        ``start``: this call starts the sequence. With variate labels, it prepends each
        variate's label (exogenous where ``exogenous``); every call places patches one
        token later, so the cache and the rotary angles count the label as upstream does.
        ``first_real``: each series' first patch that is not left padding; time attention
        hides the patches before it (:class:`~toto.model.attention.LeadingPadding`), which also
        takes ``xpos_shift`` (needs ``first_real``).
        """
        embedded = self.patch_embed(scaled.to(self.unembed.weight.dtype))
        shift = self.num_prepended_tokens
        padding = None if first_real is None else LeadingPadding(first_real + shift, shift, xpos_shift)
        if shift:
            positions = positions + shift
            last = None if last is None else last + shift
            if start:
                labels = self.variate_label_embeds(exogenous, *embedded.shape[:2])
                embedded, id_patches = self.transformer.prepend_labels(embedded, id_patches, labels)
                positions = torch.cat((torch.arange(shift, device=positions.device), positions))
                hidden = self.transformer.encode_at(embedded, id_patches, positions, cache, last, padding)
                return hidden[:, :, shift:]
        return self.transformer.encode_at(embedded, id_patches, positions, cache, last, padding)

    def head(self, hidden: Float[Tensor, "batch variate patches embed"]) -> MixtureOfStudentT:
        """Per-step mixture for the patch *after* each input patch, in the scaled space."""
        features = rearrange(
            self.unembed(hidden), "batch variate seq (step embed) -> batch variate (seq step) embed", step=self.patch_size
        )
        return self.output_distribution(features)

    def fast_head(self, hidden: Float[Tensor, "batch variate patches embed"]) -> MixtureOfStudentT:
        """:meth:`head` through one folded matrix (:mod:`toto.model.fused_head`); equal up to rounding.

        Eager calls refold if a weight changed; compiled callers call :meth:`refresh_fused_head`
        first, on the host (the forecaster does, every call).
        """
        if not torch.compiler.is_compiling():
            self.refresh_fused_head()
        return self.fused_head(hidden, self.patch_size)

    def refresh_fused_head(self) -> None:
        """Refold :meth:`fast_head`'s matrix if ``unembed`` or ``output_distribution`` changed."""
        self.fused_head.refresh(self.unembed, self.output_distribution, self.patch_size)

    def id_patches(self, id_mask: Tensor, like: Tensor) -> Int[Tensor, "batch variate patches"]:
        """One id per patch (its minimum, as upstream); ``id_mask`` may broadcast over variates or time."""
        return reduce(id_mask.expand_as(like), "... (patches step) -> ... patches", "min", step=self.patch_size)

    def forward(
        self,
        inputs: Float[Tensor, "batch variate time"],
        input_padding_mask: Bool[Tensor, "batch variate time"],
        id_mask: Int[Tensor, "batch #variate #time"],
        kv_cache: KVCache | None = None,
        scaling_prefix_length: int | None = None,
        num_exogenous_variables: int = 0,
    ) -> TotoOutput:
        """Upstream-compatible forward over a whole (padded) series.

        With ``kv_cache``, the first call processes every patch and later calls
        pass the grown series but only its newest patch is encoded, exactly as
        upstream's ``TotoBackbone.forward``. The scaler always sees the whole
        series, with global statistics from its first ``scaling_prefix_length`` steps.
        ``num_exogenous_variables`` (the last variates) only matters with variate labels.
        """
        if inputs.shape[-1] % self.patch_size:
            raise ValueError(
                f"inputs: length {inputs.shape[-1]} is not a multiple of patch_size {self.patch_size}; "
                "left-pad it (toto.data.util.dataset.pad_array)"
            )
        exogenous = exogenous_variates(inputs.shape[1], num_exogenous_variables, inputs.device)
        scaled, loc, scale, _ = self.scaler(inputs, input_padding_mask, scaling_prefix_length)
        ids = self.id_patches(id_mask, inputs)
        num_patches = ids.shape[-1]
        if kv_cache is None:
            positions = torch.arange(num_patches, device=inputs.device)
        else:
            positions = _claim_positions(kv_cache, num_patches, self.num_prepended_tokens)
            new = positions.shape[0]
            scaled, ids = scaled[..., (num_patches - new) * self.patch_size :], ids[..., num_patches - new :]
        start = positions.shape[0] == num_patches  # nothing cached before this call
        hidden = self.encode(scaled, ids, positions, kv_cache, start=start, exogenous=exogenous)
        return TotoOutput(self.head(hidden), loc, scale)


def exogenous_variates(variates: int, num_exogenous: int, device: torch.device) -> Bool[Tensor, " variate"] | None:
    """Which variates are exogenous (the last ``num_exogenous``), or None if none are."""
    check_num_exogenous(num_exogenous, variates)
    if not num_exogenous:
        return None
    return torch.arange(variates, device=device) >= variates - num_exogenous


@torch.compiler.disable
def _claim_positions(cache: KVCache, num_patches: int, prepended: int) -> Tensor:
    """Patch positions not yet in ``cache``: all of them at first, then exactly one per call.

    The first call also claims the slots of ``prepended`` label tokens.
    """
    cached = max(0, cache.length - prepended)
    new = num_patches - cached
    if cache.length and new != 1:
        raise ValueError(
            f"kv_cache holds {cached} patches but inputs have {num_patches}: "
            "after the first call, pass the series grown by exactly one patch"
        )
    cache.advance(new + (0 if cache.length else prepended))
    return torch.arange(cached, num_patches, device=cache.keys[0].device)
