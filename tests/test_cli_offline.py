"""The command layer without network or torch where none is needed: fast ``--help``, random-weight
checkpoints (``export --random-weights``), the hub's no-network error, one CSV reader for wide and long
mode, and bad input reported as one ``error:`` line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_run import cli, run_main
from toto.errors import one_line

pd = pytest.importorskip("pandas")
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", ["", "forecast", "backtest", "finetune", "export", "check", "bench"])
def test_help_does_not_import_torch(command):
    code = (
        "import sys\n"
        "from toto.cli import main\n"
        f"argv = [{command!r}, '--help'] if {command!r} else ['--help']\n"
        "try:\n    main(argv)\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write(str(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3]))\n"
        "sys.exit('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: toto-compiled" in done.stdout


def test_one_line():
    assert one_line(ValueError("first\n\n  second   part\nlast: Boom")) == "first"
    assert one_line(RuntimeError("traceback...\nValueError:   bad   value\n"), last=True) == "ValueError: bad value"
    assert one_line(KeyError()) == "KeyError"


def wave_csv(path: Path, rows: int = 40, stamps: list | None = None) -> Path:
    lines = ["t,y"] + [f"{stamps[i] if stamps else i},{10 + (i % 7) * 0.5}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_random_weights_export_loads_as_model(tmp_path, capsys):
    from toto.config import PUBLISHED_CONFIG

    folder = tmp_path / "random"
    code, out, err = run_main(capsys, ["export", "--random-weights", str(folder), "--size", "tiny", "--seed", "3"])
    assert code == 0, err
    assert "RANDOM" in err and str(folder / "model.safetensors") in out
    config = json.loads((folder / "config.json").read_text())
    assert set(config) == set(PUBLISHED_CONFIG) and config["embed_dim"] == 32 and config["patch_size"] == 16

    data = wave_csv(tmp_path / "in.csv")
    code, out, err = cli(capsys, folder, "forecast", "--input", str(data), "--prediction-length", "3")
    assert code == 0, err
    assert len(out.splitlines()) == 1 + 2 * 3  # columns t and y, 3 steps each

    code, _, err = run_main(capsys, ["export", "--random-weights", str(folder), "--size", "tiny"])
    assert code == 2 and "already exist" in err and "--force" in err
    code, _, err = run_main(capsys, ["export", "x", "--random-weights", str(folder)])
    assert code == 2 and err.startswith("toto-compiled export: error: --random-weights DIR takes no SOURCE")


def test_hub_unreachable_fails_fast_and_names_the_way_out(tmp_path, monkeypatch):
    from toto.checkpoints.reading import resolve_checkpoint

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    started = time.monotonic()
    with pytest.raises(FileNotFoundError) as caught:
        resolve_checkpoint("Datadog/Toto-Open-Base-1.0", cache_dir=tmp_path)
    assert time.monotonic() - started < 5  # huggingface_hub alone retries for about 30 s
    message = str(caught.value)
    assert "'config.json'" in message and "Datadog/Toto-Open-Base-1.0" in message
    assert "cannot reach huggingface.co" in message and "--model DIR" in message and "--random-weights" in message


def test_hub_reachable_downloads_as_asked(tmp_path, monkeypatch):
    import huggingface_hub

    from toto.checkpoints.reading import resolve_checkpoint

    calls = []

    def download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / kwargs["filename"])

    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: [])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    resolve_checkpoint("Datadog/Toto-Open-Base-1.0", force_download=True)
    assert [(c["local_files_only"], c["force_download"]) for c in calls] == [(False, True), (False, True)]


def test_model_that_is_not_a_checkpoint(tmp_path, capsys):
    data = wave_csv(tmp_path / "in.csv")
    for model in (data, tmp_path):
        code, out, err = cli(capsys, model, "forecast", "--input", str(data), "--prediction-length", "3")
        assert code == 2 and out == ""
        assert err.startswith(f"toto-compiled forecast: error: --model {model}: not a checkpoint (")
        assert "config.json" in err and "hub id" in err and len(err.splitlines()) == 1
    code, out, err = run_main(capsys, ["check", "--quick", "--device", "cpu", "--model", str(data)])
    assert code == 2 and err.startswith(f"toto-compiled check: error: --model {data}: not a checkpoint (")


QUARTERS = ["2008-10-01", "2009-01-01", "2009-04-01", "2009-07-01"]


def test_wide_and_long_step_alike(tmp_path, capsys, tiny_checkpoint):
    """Quarter starts: both modes continue on quarter starts (the median gap, 91 days, would drift)."""
    wide = wave_csv(tmp_path / "wide.csv", rows=4, stamps=QUARTERS)
    code, out, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(wide), "--timestamp-column", "t",
                         "--prediction-length", "2")
    assert code == 0, err
    wide_out = pd.read_csv(pd.io.common.StringIO(out))
    assert list(wide_out["timestamp"]) == ["2009-10-01", "2010-01-01"]
    assert list(wide_out.columns) == ["series", "step", "timestamp", "mean", "0.1", "0.5", "0.9"]

    long = tmp_path / "long.csv"
    long.write_text("item_id,timestamp,target\n" + "".join(f"a,{t},{i}\n" for i, t in enumerate(QUARTERS)))
    code, out, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(long), "--target", "target",
                         "--prediction-length", "2")
    assert code == 0, err
    long_out = pd.read_csv(pd.io.common.StringIO(out), parse_dates=["timestamp"])
    assert [t.date().isoformat() for t in long_out["timestamp"]] == list(wide_out["timestamp"])
    assert {"0.1", "0.5", "0.9"} <= set(long_out.columns)


def test_wide_keeps_rows_of_empty_cells_and_skips_blank_lines(tmp_path, capsys, tiny_checkpoint):
    path = tmp_path / "in.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(30)) + ",\n\n" + "n/a,1\n\n")
    code, _, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(path), "--prediction-length", "2")
    assert code == 0, err
    assert "32 rows x 2 columns (a, b), 3 missing" in err  # ",": 2 cells; "n/a,1": 1


@pytest.mark.parametrize("mode", ["wide", "long", "wide-epoch"])
def test_prediction_length_past_the_last_timestamp(tmp_path, capsys, tiny_checkpoint, mode):
    """Dates end in 2262; epoch numbers do not, but such a forecast cannot fit in memory."""
    stamps = [f"2024-01-{day:02d}" for day in range(1, 21)] if mode != "wide-epoch" else [60 * i for i in range(20)]
    if mode.startswith("wide"):
        path, more = wave_csv(tmp_path / "in.csv", rows=20, stamps=stamps), ["--timestamp-column", "t"]
    else:
        path = tmp_path / "in.csv"
        path.write_text("item_id,timestamp,target\n" + "".join(f"a,{t},{i % 5}\n" for i, t in enumerate(stamps)))
        more = ["--target", "target"]
    code, out, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(path), *more,
                         "--prediction-length", "1000000000")
    assert code == 2 and out == ""
    assert err.splitlines()[-1].startswith("toto-compiled forecast: error: --prediction-length 1000000000: ")
    assert err.count("error:") == 1 and "Traceback" not in err


def test_wide_without_pandas_names_the_extra(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    code, _, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(wave_csv(tmp_path / "in.csv")),
                       "--prediction-length", "2")
    assert code == 2 and 'pip install "toto-compiled[pandas]"' in err


def test_long_csv_with_a_repeated_column_name(tmp_path, capsys, tiny_checkpoint):
    path = tmp_path / "in.csv"
    path.write_text("item_id,timestamp,target,target\n" + "".join(f"a,{i},{i},{i}\n" for i in range(20)))
    code, _, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(path), "--target", "target",
                       "--prediction-length", "2")
    assert code == 2 and "repeats a column name: item_id, timestamp, target, target" in err
