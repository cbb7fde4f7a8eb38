"""Toto 2.0's configuration: the ``config.json`` fields that ``Toto2Model.save_pretrained`` writes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..config import ConfigError, _check, _is_int, _is_number

QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the output head's knots
MEDIAN = QUANTILE_LEVELS.index(0.5)

# Every published size was trained on 4,096-step contexts: each config.json ships
# residual_attn_ratio = sqrt(S / ln S) at S = 4096 / 32 patches (docs/TOTO2.md).
TRAINED_CONTEXT = 4096

# The published sizes' config.json (Datadog/Toto-2.0-<size>), as copied by third-party ports
# and checked against the model cards' file sizes (docs/TOTO2.md gives the sources).
_PUBLISHED_COMMON: dict[str, Any] = {
    "patch_size": 32, "num_variate_layers_per_group": 1, "variate_layer_first": False, "num_output_patches": 1,
    "pre_norm": True, "attn_bias": True, "mlp_bias": False, "qk_dim": 64, "v_dim": 64, "qk_norm": False,
    "qk_norm_include_weight": False, "norm_include_weight": False, "per_dim_scale": True, "use_xpos": True,
    "residual_mult": 0.75, "dropout_p": 0.0, "residual_attn_ratio": math.sqrt(128 / math.log(128)),
}  # fmt: skip
_SIZES = {  # d_model, d_ff, heads (= key/value groups), layers (= one group), norm_eps
    "4m": (256, 688, 4, 4, 1e-4),
    "22m": (512, 1368, 8, 6, 1e-4),
    "313m": (1024, 2736, 16, 24, 1e-4),
    "1B": (1536, 4096, 24, 36, 5e-4),
    "2.5B": (2048, 5464, 32, 48, 5e-4),
}
PUBLISHED_TOTO2_CONFIGS: dict[str, dict[str, Any]] = {
    size: {**_PUBLISHED_COMMON, "d_model": d, "d_ff": ff, "num_heads": h, "num_groups": h, "num_layers": n,
           "layer_group_size": n, "norm_eps": eps}  # fmt: skip
    for size, (d, ff, h, n, eps) in _SIZES.items()
}

_INTS = ("patch_size", "d_model", "num_heads", "num_layers", "layer_group_size", "num_output_patches")
_OPTIONAL_INTS = ("d_ff", "qk_dim", "v_dim", "num_groups", "heads_per_group")
_BOOLS = ("variate_layer_first", "attn_bias", "mlp_bias", "pre_norm", "qk_norm", "norm_include_weight",
          "per_dim_scale", "use_xpos")  # fmt: skip


def default_d_ff(d_model: int) -> int:
    """Upstream's default hidden width: 2/3 of 4 * d_model, rounded up to a multiple of 8."""
    return (int(4 * d_model * 2 / 3) + 7) // 8 * 8


def residual_attn_ratio(context_length: int, patch_size: int) -> float:
    """sqrt(S / ln S) with S = context_length / patch_size, as upstream computes it for a config."""
    patches = context_length / patch_size
    return math.sqrt(patches / math.log(patches))


@dataclass(frozen=True)
class Toto2Config:
    patch_size: int
    d_model: int
    num_heads: int
    num_layers: int
    layer_group_size: int
    num_variate_layers_per_group: int
    variate_layer_first: bool
    residual_attn_ratio: float
    dropout_p: float = 0.0
    norm_eps: float = 5e-5
    attn_bias: bool = False
    mlp_bias: bool = False
    num_output_patches: int = 1
    pre_norm: bool = True
    d_ff: int | None = None  # None: default_d_ff(d_model)
    qk_dim: int | None = None  # None: d_model // num_heads
    v_dim: int | None = None  # None: qk_dim
    num_groups: int | None = None  # key/value heads; None: num_heads
    heads_per_group: int | None = None  # always num_heads // num_groups
    residual_mult: float = 1.0
    qk_norm: bool = True
    norm_include_weight: bool = False
    qk_norm_include_weight: bool | None = None  # None: norm_include_weight
    per_dim_scale: bool = False
    use_xpos: bool = False

    def __post_init__(self) -> None:
        fill = {
            "d_ff": self.d_ff or default_d_ff(self.d_model),
            "qk_dim": self.qk_dim or self.d_model // self.num_heads,
            "num_groups": self.num_groups or self.num_heads,
            "qk_norm_include_weight": (
                self.norm_include_weight if self.qk_norm_include_weight is None else self.qk_norm_include_weight
            ),
        }
        fill["v_dim"] = self.v_dim or fill["qk_dim"]
        fill["heads_per_group"] = self.num_heads // fill["num_groups"]
        for key, value in fill.items():
            object.__setattr__(self, key, value)

    def is_variate_layer(self, index: int) -> bool:
        position = index % self.layer_group_size
        if self.variate_layer_first:
            return position < self.num_variate_layers_per_group
        return position >= self.layer_group_size - self.num_variate_layers_per_group

    @property
    def num_time_layers(self) -> int:
        return sum(not self.is_variate_layer(i) for i in range(self.num_layers))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> "Toto2Config":
        """Validate ``raw`` (a parsed ``config.json``); errors name ``source`` and the key."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [k for k in required if k not in raw]
        if missing:
            raise ConfigError(f"{source}: missing required Toto 2.0 key(s) {missing}")
        unknown = sorted(set(raw) - set(fields))
        if unknown:  # a flag of a later toto-2 that this version would silently ignore
            raise ConfigError(f"{source}: unsupported Toto 2.0 key(s) {unknown}; known keys: {sorted(fields)}")
        values = dict(raw)
        for key in _INTS:
            if key in values:
                _check(source, key, values[key], lambda v: _is_int(v) and v > 0, "a positive integer")
        for key in _OPTIONAL_INTS:
            _check(source, key, values.get(key), lambda v: v is None or (_is_int(v) and v > 0),
                   "a positive integer or null")  # fmt: skip
        _check(source, "num_variate_layers_per_group", values["num_variate_layers_per_group"],
               lambda v: _is_int(v) and v >= 0, "a non-negative integer")  # fmt: skip
        for key in _BOOLS:
            if key in values:
                _check(source, key, values[key], lambda v: isinstance(v, bool), "true or false")
        _check(source, "qk_norm_include_weight", values.get("qk_norm_include_weight"),
               lambda v: v is None or isinstance(v, bool), "true, false or null")  # fmt: skip
        for key in ("residual_attn_ratio", "residual_mult", "norm_eps"):
            if key in values:
                _check(source, key, values[key], lambda v: _is_number(v) and v > 0, "a positive number")
        if values.get("dropout_p", 0.0) != 0.0:
            dropout = values["dropout_p"]
            raise ConfigError(f"{source}: key 'dropout_p' must be 0 (upstream refuses dropout), got {dropout!r}")
        if values.get("pre_norm", True) is not True:
            raise ConfigError(f"{source}: key 'pre_norm' false is not supported (every Toto 2.0 layer is pre-norm)")
        config = cls(**values)
        _check_shapes(config, values, source)
        return config


def _check_shapes(config: Toto2Config, given: Mapping[str, Any], source: str) -> None:
    def fail(message: str) -> None:
        raise ConfigError(f"{source}: {message}")

    if config.num_layers % config.layer_group_size:
        fail(f"num_layers {config.num_layers} is not a multiple of layer_group_size {config.layer_group_size}")
    if config.num_variate_layers_per_group > config.layer_group_size:
        fail("num_variate_layers_per_group is larger than layer_group_size")
    if config.d_model % config.num_heads:
        fail(f"d_model {config.d_model} is not divisible by num_heads {config.num_heads}")
    if config.num_heads % config.num_groups:
        fail(f"num_heads {config.num_heads} is not a multiple of num_groups {config.num_groups}")
    if given.get("heads_per_group") not in (None, config.heads_per_group):
        fail(f"heads_per_group {given['heads_per_group']} != num_heads / num_groups = {config.heads_per_group}")
    if config.qk_dim % 4:  # rotary turns pairs of the first half of each head
        fail(f"qk_dim {config.qk_dim} must be a multiple of 4 (rotary embeddings rotate its first half in pairs)")
