"""Model configuration, parsed from Datadog's ``config.json`` layout."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

DEFAULT_MODEL_ID = "Datadog/Toto-Open-Base-1.0"  # the checkpoint loaded when none is named

# Upstream names its scaler and output head by the repr of a class object.
CAUSAL_PATCH_SCALER = "<class 'model.scaler.CausalPatchStdMeanScaler'>"
STUDENT_T_MIXTURE = "<class 'model.distribution.MixtureOfStudentTsOutput'>"
SUPPORTED_SCALERS = (CAUSAL_PATCH_SCALER,)
SUPPORTED_DISTRIBUTIONS = (STUDENT_T_MIXTURE,)

# config.json of Datadog/Toto-Open-Base-1.0, for building the architecture without its weights.
PUBLISHED_CONFIG: dict[str, Any] = {
    "patch_size": 64,
    "stride": 64,
    "embed_dim": 768,
    "num_layers": 12,
    "num_heads": 12,
    "mlp_hidden_dim": 3072,
    "dropout": 0.1,
    "spacewise_every_n_layers": 12,
    "scaler_cls": CAUSAL_PATCH_SCALER,
    "output_distribution_classes": [STUDENT_T_MIXTURE],
    "spacewise_first": False,
    "output_distribution_kwargs": {"k_components": 24},
    "use_memory_efficient_attention": True,
    "stabilize_with_global": True,
    "scale_factor_exponent": 10.0,
}

# Keys upstream reads but that change nothing here: we always use SDPA, and we
# accept both SwiGLU key spellings whatever the checkpoint's vintage.
_IGNORED_KEYS = frozenset({"use_memory_efficient_attention", "pre_xformers_checkpoint"})


def spacewise_layers(num_layers: int, every_n_layers: int, first: bool) -> tuple[bool, ...]:
    """For each layer, whether it attends across variates: one in every ``every_n_layers``
    (the first or the last of each block), none if it is -1."""
    if every_n_layers == -1:
        return (False,) * num_layers
    block = [False] * (every_n_layers - 1)
    block = [True, *block] if first else [*block, True]
    return tuple(block * (num_layers // every_n_layers))


class ConfigError(ValueError):
    """A ``config.json`` that does not describe a Toto model we can build."""


@dataclass(frozen=True)
class TotoConfig:
    patch_size: int
    stride: int
    embed_dim: int
    num_layers: int
    num_heads: int
    mlp_hidden_dim: int
    dropout: float
    spacewise_every_n_layers: int
    scaler_cls: str
    output_distribution_classes: list[str]
    spacewise_first: bool = True
    output_distribution_kwargs: dict[str, Any] = field(default_factory=dict)
    stabilize_with_global: bool = True
    scale_factor_exponent: float = 10.0

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def k_components(self) -> int:
        return int(self.output_distribution_kwargs["k_components"])

    @property
    def spacewise_layers(self) -> tuple[bool, ...]:
        """For each layer, whether it attends across variates (else across time)."""
        return spacewise_layers(self.num_layers, self.spacewise_every_n_layers, self.spacewise_first)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> "TotoConfig":
        """Validate ``raw`` (a parsed ``config.json``); errors name ``source`` and the key."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in raw]
        if missing:
            raise ConfigError(f"{source}: missing required key(s) {missing}")
        unknown = sorted(set(raw) - set(fields) - _IGNORED_KEYS)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown key(s) {unknown}", stacklevel=3)

        values = {k: raw[k] for k in fields if k in raw}
        for key in ("patch_size", "stride", "embed_dim", "num_layers", "num_heads", "mlp_hidden_dim"):
            _check(source, key, values[key], lambda v: _is_int(v) and v > 0, "a positive integer")
        _check(source, "spacewise_every_n_layers", values["spacewise_every_n_layers"],
               lambda v: _is_int(v) and (v > 0 or v == -1), "a positive integer or -1")
        _check(source, "dropout", values["dropout"], lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
        for key in ("spacewise_first", "stabilize_with_global"):
            if key in values:
                _check(source, key, values[key], lambda v: isinstance(v, bool), "true or false")
        if "scale_factor_exponent" in values:
            _check(source, "scale_factor_exponent", values["scale_factor_exponent"], _is_number, "a number")
            values["scale_factor_exponent"] = float(values["scale_factor_exponent"])

        if values["scaler_cls"] not in SUPPORTED_SCALERS:
            raise ConfigError(
                f"{source}: unknown scaler_cls {values['scaler_cls']!r}; supported: {list(SUPPORTED_SCALERS)}"
            )
        dists = values["output_distribution_classes"]
        if not isinstance(dists, list) or len(dists) != 1 or dists[0] not in SUPPORTED_DISTRIBUTIONS:
            raise ConfigError(
                f"{source}: unsupported output_distribution_classes {dists!r}; "
                f"supported: a one-element list of {list(SUPPORTED_DISTRIBUTIONS)}"
            )
        kwargs = dict(values.get("output_distribution_kwargs") or {})
        _check(source, "output_distribution_kwargs.k_components", kwargs.get("k_components"),
               lambda v: _is_int(v) and v > 0, "a positive integer")
        values["output_distribution_kwargs"] = kwargs

        if values["embed_dim"] % values["num_heads"]:
            raise ConfigError(f"{source}: embed_dim {values['embed_dim']} is not divisible by num_heads {values['num_heads']}")
        if values["embed_dim"] // values["num_heads"] % 2:
            raise ConfigError(f"{source}: head_dim (embed_dim / num_heads) must be even for rotary embeddings")
        if values["stride"] != values["patch_size"]:
            raise ConfigError(
                f"{source}: stride {values['stride']} != patch_size {values['patch_size']}; "
                "only non-overlapping patches are supported"
            )
        n = values["spacewise_every_n_layers"]
        if n != -1 and values["num_layers"] % n:
            raise ConfigError(
                f"{source}: num_layers {values['num_layers']} is not a multiple of spacewise_every_n_layers {n}"
            )
        return cls(**values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(source: str, key: str, value: Any, ok, expected: str) -> None:
    if not ok(value):
        raise ConfigError(f"{source}: key {key!r} must be {expected}, got {value!r}")
