"""``toto-compiled finetune`` and ``python -m toto.training`` (tiny model, CPU, no compile), and
``read_panel(exogenous=...)`` that reads its exogenous columns."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from tests.cli_run import cli, run_main  # noqa: E402
from toto import Toto  # noqa: E402
from toto.frames.panel import read_panel  # noqa: E402
from toto.training import TrainingDiverged  # noqa: E402
from toto.training import step as step_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
H, CONTEXT, LENGTH = 8, 32, 80
PROG = "toto-compiled finetune"


def long_frame(lengths: dict[str, int] | None = None) -> pd.DataFrame:
    """Hourly items (``a``, ``b``, ``c`` of LENGTH steps by default) with a target and an exogenous ``temp``."""
    parts = []
    for n, (item, length) in enumerate((lengths or {"a": LENGTH, "b": LENGTH, "c": LENGTH}).items()):
        t = np.arange(length)
        parts.append(pd.DataFrame({
            "item_id": item,
            "timestamp": pd.date_range("2024-03-01", periods=length, freq="h"),
            "target": np.round(10 + 3 * np.sin(t / 4 + n) + 0.5 * np.cos(t / 9), 4),
            "temp": np.round(20 + np.cos(t / 5 + n), 4),
        }))
    return pd.concat(parts, ignore_index=True)


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path, index=False)
    return path


def finetune(capsys, checkpoint: Path, data: Path, output: Path, *more: str) -> tuple[int, str, str]:
    """The command in-process; options given in ``more`` override the defaults (argparse keeps the last)."""
    argv = ["finetune", "--model", str(checkpoint), "--input", str(data), "--output", str(output),
            "--prediction-length", str(H), "--context-length", str(CONTEXT), "--steps", "3", "--batch-size", "4",
            "--device", "cpu", "--no-compile", *more]
    return run_main(capsys, argv)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return Toto.from_pretrained(folder).state_dict()


def assert_one_error(code: int, out: str, err: str, expected_code: int = 2) -> str:
    assert code == expected_code and out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}: error: ")
    return lines[0]


# --- read_panel(exogenous=...) ---------------------------------------------------------------------------------


def test_read_panel_exogenous_without_future():
    frame = long_frame({"a": 20, "b": 12})
    panel = read_panel(frame, id_column="item_id", timestamp_column="timestamp", target="target",
                       exogenous=["temp"], prediction_length=3)
    assert panel.exogenous == ("temp",) and panel.targets == ("target",)
    first = panel.items[0]
    assert first.values.shape == (2, 20)
    np.testing.assert_array_equal(first.values[1], frame["temp"][:20])  # exogenous after the targets
    assert first.future_exogenous is None and panel.future_exogenous() is None
    assert len(first.future_timestamps) == 3
    # Without the keyword nothing changes: the extra column is ignored.
    plain = read_panel(frame, id_column="item_id", timestamp_column="timestamp", target="target", prediction_length=3)
    assert plain.exogenous == () and plain.items[0].values.shape == (1, 20)


def test_read_panel_exogenous_checks_and_future():
    frame = long_frame({"a": 20})
    frame["wind"] = 1.0
    keys = dict(id_column="item_id", timestamp_column="timestamp", target="target", prediction_length=2)
    with pytest.raises(ValueError, match="no column.*humidity"):
        read_panel(frame, exogenous=["humidity"], **keys)
    with pytest.raises(ValueError, match="also the id, timestamp or target"):
        read_panel(frame, exogenous=["target"], **keys)
    with pytest.raises(ValueError, match="distinct"):
        read_panel(frame, exogenous=["temp", "temp"], **keys)
    future = pd.DataFrame({"item_id": "a", "timestamp": pd.date_range("2024-03-01 20:00", periods=2, freq="h"),
                           "temp": [1.0, 2.0], "wind": [3.0, 4.0]})
    # With a known future, `exogenous` names the same columns and sets their order.
    panel = read_panel(frame, future, exogenous=["wind", "temp"], **keys)
    assert panel.exogenous == ("wind", "temp")
    np.testing.assert_array_equal(panel.future_exogenous()[0], [[3.0, 4.0], [1.0, 2.0]])
    assert read_panel(frame, future, **keys).exogenous == ("temp", "wind")
    with pytest.raises(ValueError, match="same columns as future_df"):
        read_panel(frame, future, exogenous=["temp"], **keys)


# --- training runs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_finetune_writes_a_loadable_checkpoint(tmp_path, capsys, tiny_checkpoint, suffix):
    data = write(long_frame(), tmp_path / f"train{suffix}")
    output = tmp_path / "tuned"

    quiet = ("--quiet",) if suffix == ".parquet" else ()
    code, out, err = finetune(capsys, tiny_checkpoint, data, output, "--steps", "4", *quiet)

    assert code == 0, err
    assert out.splitlines() == [out.strip()] and out.startswith(f"wrote {output}: fine-tuned for 4 steps")
    assert "final training loss" in out
    if quiet:
        assert err == ""
    else:
        assert "3 items" in err and "step 4/4  train loss" in err and "validation" not in err
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([data.name, "tuned"])  # no staging folder left
    before, after = weights(tiny_checkpoint), weights(output)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert Toto.from_pretrained(output).config == Toto.from_pretrained(tiny_checkpoint).config

    if suffix == ".csv":  # the other commands take it as --model
        code, out, err = cli(capsys, output, "backtest", "--input", str(data), "--prediction-length", str(H))
        assert code == 0, err
        assert out.startswith("backtest: 3 items x 1 window, horizon 8")


def test_validation_losses_and_early_stopping(tmp_path, capsys, tiny_checkpoint):
    data = write(long_frame(), tmp_path / "train.csv")
    validation = write(long_frame({"a": 48, "b": 60}), tmp_path / "validation.csv")
    output = tmp_path / "tuned"

    code, out, err = finetune(capsys, tiny_checkpoint, data, output, "--validation-input", str(validation),
                              "--steps", "6", "--validate-every", "2", "--early-stopping-patience", "5")

    assert code == 0, err
    validations = [line for line in err.splitlines() if "validation loss" in line and line.startswith("step ")]
    assert [line.split()[1] for line in validations] == ["2/6", "4/6", "6/6"]
    assert "--validation-input: " in err and "2 items" in err
    assert "best validation loss" in out and out.startswith(f"wrote {output}: fine-tuned for 6 steps")
    best_step = int(out.split("at step ")[1].split()[0])
    losses = {int(line.split()[1].split("/")[0]): float(line.split("validation loss ")[1].split()[0])
              for line in validations}
    assert best_step in losses and losses[best_step] == min(losses.values())
    assert Toto.from_pretrained(output) is not None


def test_exogenous_features_are_saved(tmp_path, capsys, tiny_checkpoint):
    data = write(long_frame(), tmp_path / "train.parquet")
    output = tmp_path / "tuned"
    assert Toto.from_pretrained(tiny_checkpoint).model.fusion is None

    code, out, err = finetune(capsys, tiny_checkpoint, data, output, "--exogenous", "temp",
                              "--add-exogenous-features", "--quiet")

    assert code == 0, err
    tuned = Toto.from_pretrained(output)
    assert tuned.model.fusion is not None
    assert tuned.model.target_variate_label is not None and tuned.model.exogenous_variate_label is not None


def test_existing_output_is_refused_before_loading(tmp_path, capsys, tiny_checkpoint):
    data = write(long_frame(), tmp_path / "train.csv")
    output = tmp_path / "tuned"
    output.mkdir()
    (output / "config.json").write_text("{}")

    # A model that cannot load: the output is checked first.
    code, out, err = finetune(capsys, tmp_path / "no-such-model", data, output, "--quiet")
    line = assert_one_error(code, out, err)
    assert "--output" in line and "config.json already exists" in line and "--force" in line
    assert (output / "config.json").read_text() == "{}"

    code, out, err = finetune(capsys, tiny_checkpoint, data, output, "--quiet", "--force")
    assert code == 0, err
    assert Toto.from_pretrained(output).config == Toto.from_pretrained(tiny_checkpoint).config

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    line = assert_one_error(*finetune(capsys, tiny_checkpoint, data, not_a_folder, "--quiet", "--force"))
    assert "is not a folder" in line


BAD_INPUTS = {
    "context-under-a-patch": ({}, ["--context-length", "8"], ["--context-length 8 is shorter than one patch (16"]),
    "context-off-the-patch": ({}, ["--context-length", "40"], ["--context-length 40 is not a multiple", "32 or 48"]),
    "short-item": ({"a": LENGTH, "short": 40}, ["--prediction-length", "16"],
                   ["train.csv: item 'short' has 40 steps, fewer than 48", "--context-length", "--prediction-length"]),
    "all-nan-item": ({"a": LENGTH, "blank": LENGTH}, [], ["train.csv: item 'blank' has no observed value",
                                                         "column 'target'"]),
    "zero-steps": ({}, ["--steps", "0"], ["--steps must be a positive integer, got 0"]),
    "nan-learning-rate": ({}, ["--learning-rate", "nan"], ["--learning-rate must be a positive finite number, got nan"]),
    "min-above-peak": ({}, ["--min-learning-rate", "1e-3"], ["--min-learning-rate must be finite, from 0 to --learning-rate (0.0001), got 0.001"]),
    "missing-target": ({}, ["--target", "load"], ["train.csv: no column 'load' (--target)"]),
    "missing-exogenous": ({}, ["--exogenous", "humidity"], ["train.csv: no column 'humidity' (--exogenous)"]),
    "missing-id": ({}, ["--id-column", "series"], ["train.csv: no column 'series' (--id-column)"]),
    "target-is-exogenous": ({}, ["--exogenous", "target"], ["--exogenous 'target': the column is already --target"]),
    "missing-file": ({}, ["--input", "{tmp}/absent.csv"], ["absent.csv: cannot read (no such file)"]),
    "missing-validation-file": ({}, ["--validation-input", "{tmp}/absent.parquet"],
                                ["absent.parquet: cannot read (no such file)"]),
    "patience-without-validation": ({}, ["--early-stopping-patience", "2"], ["needs --validation-input"]),
    "features-without-exogenous": ({}, ["--add-exogenous-features"], ["needs --exogenous"]),
    "zero-grad-norm": ({}, ["--max-grad-norm", "0"], ["--max-grad-norm must be a positive finite number or None, got 0.0"]),
    "too-many-layers": ({}, ["--trainable", "9"], ["--trainable must be", "from 0 to 4, got 9"]),
    "dropout-one": ({}, ["--dropout", "1"], ["--dropout must be in [0, 1) or None, got 1.0"]),
    "cuda-here": ({}, ["--device", "cuda"], ["--device cuda"]),
    "bad-model": ({}, ["--model", "{tmp}/no-such-model"], ["cannot load model", "no-such-model"]),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_inputs_are_usage_errors(tmp_path, capsys, tiny_checkpoint, case):
    lengths, more, messages = BAD_INPUTS[case]
    if case == "cuda-here" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    frame = long_frame(lengths or None)
    if "blank" in (lengths or {}):
        frame.loc[frame["item_id"] == "blank", "target"] = np.nan
    data = write(frame, tmp_path / "train.csv")
    more = [arg.replace("{tmp}", str(tmp_path)) for arg in more]

    code, out, err = finetune(capsys, tiny_checkpoint, data, tmp_path / "tuned", *more, "--quiet")

    line = assert_one_error(code, out, err)
    for message in messages:
        assert message in line
    assert not (tmp_path / "tuned").exists()


@pytest.mark.parametrize(("lengths", "message"), [
    ({"a": LENGTH, "v": 30}, "validation.parquet: item 'v' has 30 steps, fewer than 48"),
    ({"a": LENGTH, "v": LENGTH}, "validation.parquet: item 'v': its last 8 steps are all NaN"),
], ids=["short", "nan-tail"])
def test_bad_validation_items_are_named(tmp_path, capsys, tiny_checkpoint, lengths, message):
    data = write(long_frame(), tmp_path / "train.csv")
    frame = long_frame(lengths)
    if message.endswith("NaN"):
        frame.loc[frame.index[-H:], "target"] = np.nan  # item v's last H steps
    validation = write(frame, tmp_path / "validation.parquet")

    code, out, err = finetune(capsys, tiny_checkpoint, data, tmp_path / "tuned", "--validation-input",
                              str(validation), "--quiet")

    assert message in assert_one_error(code, out, err)
    assert not (tmp_path / "tuned").exists()


def test_non_numeric_option_is_an_argparse_error(tmp_path, capsys, tiny_checkpoint):
    data = write(long_frame(), tmp_path / "train.csv")
    code, out, err = finetune(capsys, tiny_checkpoint, data, tmp_path / "tuned", "--steps", "three")
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == f"{PROG}: error: argument --steps: invalid int value: 'three'"


def test_divergence_is_exit_1_and_writes_nothing(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    data = write(long_frame(), tmp_path / "train.csv")
    output = tmp_path / "deep" / "tuned"
    calls = []
    backward = step_module.TrainingStep.backward

    def failing(self, windows):
        calls.append(1)
        if len(calls) == 3:
            raise TrainingDiverged("step 3: the training loss is nan")
        return backward(self, windows)

    monkeypatch.setattr(step_module.TrainingStep, "backward", failing)

    code, out, err = finetune(capsys, tiny_checkpoint, data, output, "--steps", "5", "--quiet")

    line = assert_one_error(code, out, err, expected_code=1)
    assert "training diverged at step 3: the training loss is nan" in line
    assert f"nothing was written to {output}" in line
    assert not output.exists() and not output.parent.exists()


# --- python -m toto.training -----------------------------------------------------------------------------------


def test_module_help():
    done = subprocess.run([sys.executable, "-m", "toto.training", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m toto.training")
    for option in ("--context-length", "--steps", "--output", "--validation-input", "--max-grad-norm"):
        assert option in done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_write_one_checkpoint(tmp_path, tiny_checkpoint):
    data = write(long_frame(), tmp_path / "train.csv")
    output = tmp_path / "tuned"
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_free_port()}",
        "-m", "toto.training", "--model", str(tiny_checkpoint), "--input", str(data), "--output", str(output),
        "--prediction-length", str(H), "--context-length", str(CONTEXT), "--steps", "3", "--batch-size", "4",
        "--device", "cpu", "--no-compile",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO, env=env)

    assert done.returncode == 0, done.stderr
    wrote = [line for line in done.stdout.splitlines() if line.startswith("wrote ")]
    assert wrote == [line for line in done.stdout.splitlines() if line.strip()]  # rank 0 only prints
    assert len(wrote) == 1 and wrote[0].startswith(f"wrote {output}: fine-tuned for 3 steps")
    assert "in each of 2 processes" in done.stderr
    assert sum(line.startswith("step 3/3") for line in done.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv", "tuned"]
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "model.safetensors"]
    before, after = weights(tiny_checkpoint), weights(output)
    assert any(not torch.equal(before[k], after[k]) for k in before)
