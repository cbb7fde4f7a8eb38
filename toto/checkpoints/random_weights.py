"""Random-weight checkpoints in Datadog's published layout, written from the key list alone.

Used by ``toto-compiled check``/``bench`` (no download needed) and by the tests.
Deliberately independent of the model code: key names and shapes follow the
published checkpoint (``mlp.0.w12``/``mlp.0.w3``, a stale ``rotary_emb.freqs``),
so loading one tests the key mapping rather than echoing our own state_dict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file


def published_shapes(config: dict, variate_labels: bool = False) -> dict[str, tuple[int, ...]]:
    """Key -> shape; ``variate_labels`` adds the two label vectors of a model fine-tuned with exogenous features."""
    e, p, h = config["embed_dim"], config["patch_size"], config["mlp_hidden_dim"]
    k = config["output_distribution_kwargs"]["k_components"]
    shapes = {
        "model.patch_embed.projection.weight": (e, p),
        "model.patch_embed.projection.bias": (e,),
        "model.unembed.weight": (e * p, e),
        "model.unembed.bias": (e * p,),
        "model.transformer.rotary_emb.freqs": (e // config["num_heads"] // 2,),
    }
    for head in ("df", "loc_proj", "scale_proj", "mixture_weights"):
        shapes[f"model.output_distribution.{head}.weight"] = (k, e)
        shapes[f"model.output_distribution.{head}.bias"] = (k,)
    for i in range(config["num_layers"]):
        layer = f"model.transformer.layers.{i}"
        shapes.update(
            {
                f"{layer}.norm1.scale": (e,),
                f"{layer}.norm2.scale": (e,),
                f"{layer}.attention.wQKV.weight": (3 * e, e),
                f"{layer}.attention.wQKV.bias": (3 * e,),
                f"{layer}.attention.wO.weight": (e, e),
                f"{layer}.attention.wO.bias": (e,),
                f"{layer}.mlp.0.w12.weight": (2 * h, e),
                f"{layer}.mlp.0.w12.bias": (2 * h,),
                f"{layer}.mlp.0.w3.weight": (e, h),
                f"{layer}.mlp.0.w3.bias": (e,),
            }
        )
    if variate_labels:
        shapes["model.target_variate_label"] = (e,)
        shapes["model.exogenous_variate_label"] = (e,)
    return shapes


def random_published_state(config: dict, seed: int = 0, variate_labels: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in published_shapes(config, variate_labels).items():
        if key.endswith("rotary_emb.freqs"):
            state[key] = torch.rand(shape, generator=gen)  # stale junk: must be ignored
        elif key.endswith(".scale"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("_variate_label"):
            state[key] = torch.randn(shape, generator=gen)  # unit length once fused: any scale will do
        elif key.endswith(".bias"):
            state[key] = 0.02 * torch.randn(shape, generator=gen)
        elif key.startswith("model.output_distribution."):
            # Smaller head weights keep component scales well above the eps clamp (1.2e-7);
            # at the clamp, log_prob amplifies float32 rounding of loc a millionfold, which
            # would measure conditioning rather than parity. A trained head lives there too.
            state[key] = 0.1 * torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        else:
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
    return state


def write_checkpoint(directory: Path, config: dict, seed: int = 0, state: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state if state is not None else random_published_state(config, seed), str(directory / "model.safetensors"))
    return directory
