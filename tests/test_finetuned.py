"""Fine-tuned checkpoints (upstream's Lightning ``.ckpt``) and the ``export`` subcommand.

The ``.ckpt`` files are built here as Lightning writes them: a pickle of plain
data (dicts, lists, numbers, strings) and tensors, with the module's weights
under ``state_dict`` as ``model.<backbone key>`` (upstream's ``TotoForFinetuning``
holds the backbone as ``self.model``).
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import TINY_CONFIG, published_shapes, random_published_state, write_checkpoint
from oracle import import_oracle
from safetensors.torch import load_file

from toto import Toto, TotoForecaster, TotoPipeline
from toto.cli import main
from toto.checkpoints import writing as saving
from toto.config import TotoConfig
from toto.data.util.dataset import masked_timeseries
from toto.scripts.finetune_toto import load_finetuned_toto
from toto.checkpoints.reading import CheckpointError

FINETUNED_SEED = 7  # the base model (tiny_checkpoint) has seed 1: different weights
EMBED_DIM = TINY_CONFIG["embed_dim"]


# --- building checkpoints -------------------------------------------------------------------


def unfused(key: str) -> str:
    """A published (xFormers) SwiGLU name -> the plain ``nn.Linear`` one, which is also ours."""
    return key.replace(".mlp.0.w12.", ".mlp.0.").replace(".mlp.0.w3.", ".mlp.2.")


def finetuned_state(layout: str = "unfused", seed: int = FINETUNED_SEED) -> dict[str, torch.Tensor]:
    """Weights as TotoForFinetuning.state_dict() has them: without xFormers ("unfused") or with it ("fused")."""
    state = random_published_state(TINY_CONFIG, seed=seed)
    del state["model.transformer.rotary_emb.freqs"]  # a non-persistent buffer upstream: never in a .ckpt
    return {unfused(k): v for k, v in state.items()} if layout == "unfused" else state


def save_lightning_checkpoint(path: Path, state: dict, **hyper_parameters) -> Path:
    """What ``Trainer.save_checkpoint`` writes for TotoForFinetuning, optimizer state included."""
    first = next(iter(state.values()))
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.5),
                                                                 "best_model_path": "checkpoints/best.ckpt"}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(120.0), "exp_avg": torch.zeros_like(first)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}],
        "lr_schedulers": [{"base_lrs": [1e-4], "last_epoch": 120}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"val_prediction_len": 96, "lr": 1e-4, "betas": (0.9, 0.999),
                             "add_exogenous_features": False, **hyper_parameters},
    }
    torch.save(checkpoint, path)
    return path


def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = model.state_dict()
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


def mean_forecast(model: Toto) -> torch.Tensor:
    series = torch.randn(1, 2, 3 * TINY_CONFIG["patch_size"], generator=torch.Generator().manual_seed(3))
    forecaster = TotoForecaster(model.model, torch_compile=False)
    return forecaster.forecast(masked_timeseries(series), prediction_length=20).mean


def _touch(path: str) -> None:
    Path(path).touch()


class CodeOnLoad:
    """Unpickling this calls ``_touch(marker)``: stands in for any code a pickle may run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _touch, (self.marker,)


@pytest.fixture
def finetuned_ckpt(tmp_path) -> Path:
    return save_lightning_checkpoint(tmp_path / "epoch=3-step=120.ckpt", finetuned_state())


# --- load_finetuned_toto --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["unfused", "fused"])
@pytest.mark.parametrize("container", ["lightning", "plain state dict"])
def test_loads_the_fine_tuned_weights(tiny_checkpoint, tmp_path, layout, container):
    state = finetuned_state(layout)
    path = tmp_path / "finetuned.ckpt"
    if container == "lightning":
        save_lightning_checkpoint(path, state)
    else:
        torch.save(state, path)  # what the error message for unsafe files tells users to write
    model = load_finetuned_toto(str(tiny_checkpoint), path)
    assert isinstance(model, Toto) and not model.training and model.device == torch.device("cpu")
    assert_same_weights(model, {unfused(k): v for k, v in state.items()})
    base = Toto.load_from_checkpoint(tiny_checkpoint)
    assert not torch.equal(model.model.unembed.weight, base.model.unembed.weight)  # the .ckpt's, not the base's


def test_importable_at_upstreams_path():
    from toto.scripts.finetune_toto import load_finetuned_toto as at_upstream_path

    assert at_upstream_path is load_finetuned_toto


def test_code_in_the_pickle_is_refused_and_never_run(tiny_checkpoint, tmp_path):
    marker = tmp_path / "code ran"
    path = save_lightning_checkpoint(tmp_path / "trainer.ckpt", finetuned_state(), callback=CodeOnLoad(marker))
    with pytest.raises(CheckpointError) as info:
        load_finetuned_toto(tiny_checkpoint, path)
    message = str(info.value)
    assert message.startswith(f"{path}: refusing to unpickle")
    assert "weights_only=True" in message and "_touch" in message
    assert "torch.save(ckpt['state_dict']" in message
    assert not marker.exists()

    # The advice works, and shows the payload was live: full unpickling runs it.
    checkpoint = torch.load(path, weights_only=False)
    assert marker.exists()
    torch.save(checkpoint["state_dict"], tmp_path / "weights.pt")
    model = load_finetuned_toto(tiny_checkpoint, tmp_path / "weights.pt")
    assert_same_weights(model, finetuned_state())


def test_unexpected_and_missing_keys_are_named(tiny_checkpoint, tmp_path):
    state = finetuned_state()
    state["model.adapter.weight"] = torch.zeros(4, EMBED_DIM)
    del state["model.unembed.bias"]
    path = save_lightning_checkpoint(tmp_path / "odd.ckpt", state)
    with pytest.raises(CheckpointError) as info:
        load_finetuned_toto(tiny_checkpoint, path)
    message = str(info.value)
    assert str(path) in message
    assert "unexpected keys ['model.adapter.weight']" in message
    assert "missing keys ['model.unembed.bias']" in message


def test_variate_labels_load_and_export(tiny_checkpoint, tmp_path):
    """A model fine-tuned with exogenous features (upstream's enable_variate_labels) loads and exports whole."""
    state = finetuned_state()
    state["model.target_variate_label"] = torch.randn(EMBED_DIM)
    state["model.exogenous_variate_label"] = torch.randn(EMBED_DIM)
    path = save_lightning_checkpoint(tmp_path / "exogenous.ckpt", state, add_exogenous_features=True)
    model = load_finetuned_toto(tiny_checkpoint, path)
    assert model.model.num_prepended_tokens == 1
    assert_same_weights(model, state)

    out = tmp_path / "exported"
    assert main(["export", str(tiny_checkpoint), str(out), "--finetuned-checkpoint", str(path)]) == 0
    written = load_file(str(out / "model.safetensors"))
    assert torch.equal(written["model.target_variate_label"], state["model.target_variate_label"])
    exported = Toto.load_from_checkpoint(out)
    assert_same_weights(exported, state)
    assert torch.equal(mean_forecast(exported), mean_forecast(model))


def test_one_variate_label_alone_is_named_as_missing_the_other(tiny_checkpoint, tmp_path):
    state = finetuned_state()
    state["model.exogenous_variate_label"] = torch.randn(EMBED_DIM)
    path = save_lightning_checkpoint(tmp_path / "half.ckpt", state)
    with pytest.raises(CheckpointError, match=r"missing keys \['model.target_variate_label'\]"):
        load_finetuned_toto(tiny_checkpoint, path)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"not a pickle at all", "not a readable PyTorch checkpoint"),
        ({"epoch": 1, "global_step": 2}, "no 'state_dict' key (found ['epoch', 'global_step'])"),
        ({"state_dict": {"model.unembed.bias": [0.0, 1.0]}}, "entry 'model.unembed.bias' is a list, not a tensor"),
        ({"state_dict": [torch.zeros(2)]}, "key 'state_dict': expected a dict of tensors, found list"),
        ({"patch_embed.projection.bias": torch.zeros(EMBED_DIM)}, "no key starts with 'model.'"),
    ],
    ids=["garbage", "no state_dict", "non-tensor entry", "state_dict not a dict", "backbone only"],
)
def test_malformed_files_name_the_file_and_the_problem(tiny_checkpoint, tmp_path, content, expected):
    path = tmp_path / "bad.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError) as info:
        load_finetuned_toto(tiny_checkpoint, path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_missing_checkpoint_file(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="fine-tuned checkpoint not found: .*nowhere.ckpt"):
        load_finetuned_toto(tiny_checkpoint, tmp_path / "nowhere.ckpt")


# --- export ---------------------------------------------------------------------------------


def test_export_round_trip_gives_the_same_model_and_forecast(tiny_checkpoint, tmp_path, capsys):
    source = Toto.load_from_checkpoint(tiny_checkpoint)
    assert not source.model.unembed.weight.is_contiguous()  # column-major on CPU: export must cope
    out = tmp_path / "exported"
    assert main(["export", str(tiny_checkpoint), str(out)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert len(modes) == 1  # the weights too, though safetensors alone would make them private (0600)

    # The published names and shapes (the stale rotary buffer is optional, and left out).
    written = load_file(str(out / "model.safetensors"))
    expected = {k: v for k, v in published_shapes(TINY_CONFIG).items() if not k.endswith("rotary_emb.freqs")}
    assert {k: tuple(v.shape) for k, v in written.items()} == expected
    assert TotoConfig.from_dict(json.loads((out / "config.json").read_text())) == source.config

    exported = Toto.load_from_checkpoint(out)
    assert_same_weights(exported, source.state_dict())
    assert torch.equal(mean_forecast(exported), mean_forecast(source))
    assert isinstance(TotoPipeline.from_pretrained(str(out), device_map="cpu", torch_compile=False), TotoPipeline)


def test_export_of_a_fine_tuned_checkpoint(tiny_checkpoint, finetuned_ckpt, tmp_path):
    out = tmp_path / "finetuned"
    assert main(["export", str(tiny_checkpoint), str(out), "--finetuned-checkpoint", str(finetuned_ckpt)]) == 0
    finetuned = load_finetuned_toto(tiny_checkpoint, finetuned_ckpt)
    exported = Toto.load_from_checkpoint(out)
    assert_same_weights(exported, finetuned.state_dict())
    assert torch.equal(mean_forecast(exported), mean_forecast(finetuned))


def test_export_refuses_to_overwrite_without_force(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(tiny_checkpoint), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = write_checkpoint(tmp_path / "other", TINY_CONFIG, seed=3)
    capsys.readouterr()

    assert main(["export", str(other), str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--force" in err and str(out / "config.json") in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    assert main(["export", str(other), str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temporary files left
    assert_same_weights(Toto.load_from_checkpoint(out), Toto.load_from_checkpoint(other).state_dict())


def test_failed_write_leaves_the_previous_export_intact(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(tiny_checkpoint), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(state, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saving, "save_file", disk_full)
    assert main(["export", str(tiny_checkpoint), str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write into {out}" in err and "No space left on device" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no staging folder left behind


def test_export_reports_load_errors_in_one_line(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(tmp_path / "nowhere"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("toto-compiled export: error: cannot load model") and "nowhere" in err
    assert "Traceback" not in err and not out.exists()

    marker = tmp_path / "code ran"
    unsafe = save_lightning_checkpoint(tmp_path / "unsafe.ckpt", finetuned_state(), callback=CodeOnLoad(marker))
    assert main(["export", str(tiny_checkpoint), str(out), "--finetuned-checkpoint", str(unsafe)]) == 2
    err = capsys.readouterr().err
    assert "refusing to unpickle" in err and str(unsafe) in err
    assert not marker.exists() and not out.exists()


def test_export_into_a_file_path_is_refused(tiny_checkpoint, tmp_path, capsys):
    target = tmp_path / "a file"
    target.write_text("")
    assert main(["export", str(tiny_checkpoint), str(target)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


# --- upstream, when the oracle is installed -------------------------------------------------


@pytest.fixture
def forget_oracle_import():
    """Leave the process as found: test_cli's bench test expects upstream importable only through --oracle."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.split(".")[0] == "toto_upstream":
            del sys.modules[name]


@pytest.mark.usefixtures("forget_oracle_import")
def test_upstream_lightning_loader_reads_the_same_weights(tiny_checkpoint, tmp_path):
    """Upstream's load_finetuned_toto, minus its script's imports (absolute ``toto.*``, datasets, yaml)."""
    lightning_module = import_oracle("model.lightning_module")
    upstream = import_oracle("model.toto")
    fused = import_oracle("model.transformer").XFORMERS_SWIGLU_AVAILABLE
    path = save_lightning_checkpoint(tmp_path / "finetuned.ckpt", finetuned_state("fused" if fused else "unfused"))

    backbone = upstream.Toto.load_from_checkpoint(str(tiny_checkpoint)).model
    theirs = lightning_module.TotoForFinetuning.load_from_checkpoint(
        checkpoint_path=str(path), pretrained_backbone=backbone, map_location="cpu"
    )
    ours = load_finetuned_toto(tiny_checkpoint, path)
    theirs_state = {unfused(k): v for k, v in theirs.model.state_dict().items()}
    assert_same_weights(ours.model, theirs_state)


@pytest.mark.usefixtures("forget_oracle_import")
def test_upstream_reads_the_exported_folder(tiny_checkpoint, finetuned_ckpt, tmp_path):
    upstream = import_oracle("model.toto")
    out = tmp_path / "exported"
    assert main(["export", str(tiny_checkpoint), str(out), "--finetuned-checkpoint", str(finetuned_ckpt)]) == 0
    theirs = upstream.Toto.load_from_checkpoint(str(out))
    ours = load_finetuned_toto(tiny_checkpoint, finetuned_ckpt)
    assert_same_weights(ours, {unfused(k): v for k, v in theirs.state_dict().items()})
