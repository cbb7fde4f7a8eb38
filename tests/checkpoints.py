"""Checkpoints for the tests: the published layout (``toto.checkpoints.random_weights``) at tiny and full size."""

from __future__ import annotations

from toto.config import PUBLISHED_CONFIG
from toto.checkpoints.random_weights import published_shapes, random_published_state, write_checkpoint

__all__ = ["PUBLISHED_CONFIG", "TINY_CONFIG", "published_shapes", "random_published_state", "write_checkpoint"]

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
