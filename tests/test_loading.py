"""Checkpoint loading: the published layout loads cleanly; every damaged one names the problem."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from checkpoints import PUBLISHED_CONFIG, TINY_CONFIG, random_published_state, write_checkpoint
from safetensors.torch import load_file

from toto import Toto
from toto.config import ConfigError, TotoConfig
from toto.checkpoints.reading import CheckpointError

LAYER0 = "model.transformer.layers.0"


def test_published_layout_loads_without_warnings(tiny_checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = Toto.load_from_checkpoint(tiny_checkpoint)
    published = load_file(str(tiny_checkpoint / "model.safetensors"))
    layer = model.model.transformer.layers[0]
    assert torch.equal(layer.mlp[0].weight, published[f"{LAYER0}.mlp.0.w12.weight"])
    assert torch.equal(layer.mlp[2].bias, published[f"{LAYER0}.mlp.0.w3.bias"])
    assert torch.equal(layer.norm1.scale, published[f"{LAYER0}.norm1.scale"])
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_float32_linear_weights_are_column_major_on_cpu_with_the_same_values(tiny_checkpoint):
    published = load_file(str(tiny_checkpoint / "model.safetensors"))
    model = Toto.load_from_checkpoint(tiny_checkpoint)
    weight = model.model.transformer.layers[0].attention.wQKV.weight
    assert weight.stride() == (1, weight.shape[0])  # column-major: what MKL multiplies fastest at a few rows
    assert torch.equal(weight, published[f"{LAYER0}.attention.wQKV.weight"])
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(not m.weight.is_contiguous() for m in linears)
    # bfloat16 keeps the row-major layout (measured slower column-major at one row).
    half = Toto.load_from_checkpoint(tiny_checkpoint, dtype=torch.bfloat16)
    assert all(m.weight.is_contiguous() for m in half.modules() if isinstance(m, torch.nn.Linear))


def test_config_fields_are_read_from_the_file(tmp_path):
    config = {**TINY_CONFIG, "num_layers": 6, "spacewise_every_n_layers": 3, "spacewise_first": True,
              "scale_factor_exponent": 4.0, "stabilize_with_global": False}
    model = Toto.load_from_checkpoint(write_checkpoint(tmp_path, config))
    assert model.config.spacewise_layers == (True, False, False, True, False, False)
    assert model.model.scaler.scale_factor_exponent == 4.0
    assert model.model.scaler.stabilize_with_global is False
    assert len(model.model.transformer.layers) == 6


def test_published_config_parses():
    config = TotoConfig.from_dict(PUBLISHED_CONFIG)
    assert (config.patch_size, config.stride, config.embed_dim, config.num_layers) == (64, 64, 768, 12)
    assert (config.num_heads, config.mlp_hidden_dim, config.spacewise_every_n_layers) == (12, 3072, 12)
    assert (config.k_components, config.stabilize_with_global, config.scale_factor_exponent) == (24, True, 10.0)
    assert config.spacewise_first is False and config.dropout == 0.1
    assert config.spacewise_layers == (False,) * 11 + (True,)


def test_unfused_swiglu_names_load_to_the_same_model(tmp_path, tiny_checkpoint):
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    renamed = {k.replace("mlp.0.w12.", "mlp.0.").replace("mlp.0.w3.", "mlp.2."): v for k, v in state.items()}
    assert renamed.keys() != state.keys()
    other = Toto.load_from_checkpoint(write_checkpoint(tmp_path, TINY_CONFIG, state=renamed))
    reference = Toto.load_from_checkpoint(tiny_checkpoint)
    for (name, a), (_, b) in zip(reference.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name


def test_file_path_and_dtype(tiny_checkpoint):
    model = Toto.load_from_checkpoint(tiny_checkpoint / "model.safetensors", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def _damaged(tmp_path: Path, edit) -> Path:
    state = random_published_state(TINY_CONFIG, seed=3)
    edit(state)
    return write_checkpoint(tmp_path, TINY_CONFIG, state=state)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.pop(f"{LAYER0}.attention.wO.weight"), ["missing keys", "model.transformer.layers.0.attention.wO.weight"]),
        (lambda s: s.__setitem__("model.unembed.bias", torch.zeros(3)), ["model.unembed.bias", "(3,)"]),
        (lambda s: s.__setitem__("model.extra.weight", torch.zeros(2)), ["unexpected keys", "model.extra.weight"]),
        (lambda s: s.__setitem__(f"{LAYER0}.mlp.0.weight", s[f"{LAYER0}.mlp.0.w12.weight"].clone()), ["two spellings", "mlp.0.w12.weight", "layers.0.mlp.0.weight"]),
        (lambda s: s.__setitem__("model.unembed.bias", torch.zeros_like(s["model.unembed.bias"], dtype=torch.int32)), ["non-floating", "model.unembed.bias"]),
    ],
    ids=["missing", "mis-shaped", "unexpected", "both-spellings", "integer"],
)
def test_damaged_weights_name_the_key_and_file(tmp_path, edit, expected):
    folder = _damaged(tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        Toto.load_from_checkpoint(folder)
    for text in [*expected, str(folder / "model.safetensors")]:
        assert text in str(err.value)


def test_truncated_weights_file(tmp_path, tiny_checkpoint):
    folder = write_checkpoint(tmp_path, TINY_CONFIG)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read safetensors") as err:
        Toto.load_from_checkpoint(folder)
    assert str(weights) in str(err.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"embed_dim": None}, "missing required key(s) ['embed_dim']"),
        ({"scaler_cls": "<class 'model.scaler.StdMeanScaler'>"}, "unknown scaler_cls"),
        ({"output_distribution_classes": ["<class 'model.distribution.Gaussian'>"]}, "unsupported output_distribution_classes"),
        ({"num_heads": 5}, "not divisible by num_heads"),
        ({"patch_size": "64"}, "'patch_size' must be a positive integer"),
        ({"output_distribution_kwargs": {}}, "k_components"),
        ({"num_layers": 5}, "not a multiple of spacewise_every_n_layers"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, change, expected):
    config = {k: v for k, v in {**TINY_CONFIG, **change}.items() if v is not None}
    folder = write_checkpoint(tmp_path, config, state={"x": torch.zeros(1)})
    with pytest.raises(ConfigError) as err:
        Toto.load_from_checkpoint(folder)
    assert expected in str(err.value) and str(folder / "config.json") in str(err.value)


def test_unknown_config_key_warns(tmp_path):
    folder = write_checkpoint(tmp_path, {**TINY_CONFIG, "surprise": 1})
    with pytest.warns(UserWarning, match="surprise"):
        Toto.load_from_checkpoint(folder)


def test_invalid_json(tmp_path):
    folder = write_checkpoint(tmp_path, TINY_CONFIG)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Toto.load_from_checkpoint(folder)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_missing_file(tmp_path, missing):
    folder = write_checkpoint(tmp_path, TINY_CONFIG)
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        Toto.load_from_checkpoint(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Toto.load_from_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither an existing path nor a hub repo id"):
        Toto.from_pretrained(str(tmp_path / "nowhere"))


def test_hub_download_receives_every_option(monkeypatch, tiny_checkpoint, tmp_path):
    """The hub path calls huggingface_hub.hf_hub_download once per file with the caller's options."""
    import huggingface_hub

    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(tiny_checkpoint / kwargs["filename"])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = Toto.from_pretrained(
        "Datadog/Toto-Open-Base-1.0", revision="abc123", cache_dir=tmp_path, local_files_only=True, token="tok"
    )
    assert isinstance(model, Toto)
    assert [c["filename"] for c in calls] == ["config.json", "model.safetensors"]
    for call in calls:
        assert call["repo_id"] == "Datadog/Toto-Open-Base-1.0"
        assert (call["revision"], call["cache_dir"], call["local_files_only"], call["token"]) == ("abc123", tmp_path, True, "tok")


def test_hub_offline_error_names_the_repo(tmp_path):
    """Real huggingface_hub call, kept offline by local_files_only and an empty cache."""
    with pytest.raises(FileNotFoundError, match="Datadog/Toto-Open-Base-1.0"):
        Toto.from_pretrained("Datadog/Toto-Open-Base-1.0", cache_dir=tmp_path, local_files_only=True)


def test_constructor_forms():
    model = Toto(**TINY_CONFIG)
    assert model.config == TotoConfig.from_dict(TINY_CONFIG)
    with pytest.raises(TypeError, match="not both"):
        Toto(TotoConfig.from_dict(TINY_CONFIG), embed_dim=8)


def test_config_round_trips_through_json(tmp_path):
    config = TotoConfig.from_dict(TINY_CONFIG)
    assert TotoConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
