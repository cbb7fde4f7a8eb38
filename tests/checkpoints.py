"""Checkpoints for the tests: the published layout (``toto.checkpoints.random_weights``) at tiny and full size."""

from __future__ import annotations

from toto.config import PUBLISHED_CONFIG
from toto.checkpoints.random_weights import published_shapes, random_published_state, write_checkpoint
from toto.toto2.config import PUBLISHED_TOTO2_CONFIGS
from toto.toto2.loading import write_random_toto2

__all__ = ["PUBLISHED_CONFIG", "PUBLISHED_TOTO2_CONFIGS", "TINY_CONFIG", "TINY_TOTO2_CONFIG", "published_shapes",
           "random_published_state", "write_checkpoint", "write_random_toto2"]

# Small enough for compile tests, with two space-wise layers and several heads.
TINY_CONFIG = {
    **PUBLISHED_CONFIG,
    "patch_size": 16,
    "stride": 16,
    "embed_dim": 32,
    "num_layers": 4,
    "num_heads": 4,
    "mlp_hidden_dim": 64,
    "spacewise_every_n_layers": 2,
    "output_distribution_kwargs": {"k_components": 5},
}

# Toto 2.0: the published flags (xPos, per-dimension query scale, no QK norm, attention
# biases) at a size small enough for compile tests, with two variate layers.
TINY_TOTO2_CONFIG = {
    **PUBLISHED_TOTO2_CONFIGS["4m"],
    "patch_size": 16,
    "d_model": 32,
    "d_ff": 88,
    "num_heads": 4,
    "num_groups": 2,
    "qk_dim": 8,
    "v_dim": 8,
    "num_layers": 4,
    "layer_group_size": 2,
}
