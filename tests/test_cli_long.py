"""``toto-compiled forecast`` on long CSV/Parquet files and ``toto-compiled backtest`` (tiny model, CPU, no compile)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from tests.cli_run import cli  # noqa: E402
from toto import TotoPipeline  # noqa: E402
from toto.commands import forecast as forecast_command  # noqa: E402
from toto.frames import io as frames_io  # noqa: E402
from toto.evaluation import backtest as library_backtest  # noqa: E402

H = 4
LEVELS = ["0.1", "0.5", "0.9"]
FORECAST_COLUMNS = ["item_id", "timestamp", "target_name", "predictions", "mean", *LEVELS]
METRICS = ("MASE", "WQL", "MAE", "RMSE", "coverage")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def panel(missing_row: bool = True) -> pd.DataFrame:
    """Three hourly items of different lengths and starts; ``north`` lacks one row; ids are text ("007")."""
    parts = []
    for n, (item, start, length) in enumerate((("north", "2024-03-01 00:00", 40), ("007", "2024-03-01 05:00", 30),
                                               ("south", "2024-03-01 10:00", 24))):
        t = np.arange(length)
        parts.append(pd.DataFrame({
            "item_id": item,
            "timestamp": pd.date_range(start, periods=length, freq="h"),
            "load": np.round(10 + 3 * np.sin(t / 4 + n), 4),
            "temp": np.round(20 + np.cos(t / 5 + n), 4),
            "price": np.round(1 + 0.1 * (t % 7), 4),
        }))
    frame = pd.concat(parts, ignore_index=True)
    if missing_row:
        frame = frame.drop(index=17).reset_index(drop=True)  # north, 17:00
    return frame


def last_stamps(frame: pd.DataFrame) -> dict:
    return frame.groupby("item_id", sort=False)["timestamp"].max().to_dict()


def long_args(path: Path, *more: str) -> list[str]:
    return ["--input", str(path), "--id-column", "item_id", "--timestamp-column", "timestamp",
            "--prediction-length", str(H), *more]


def read_back(path: Path) -> pd.DataFrame:
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"item_id": str}, parse_dates=["timestamp"])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


# --- forecast, long format -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "output"), [("csv", "csv"), ("parquet", "parquet"), ("csv", "pq"),
                                                ("parquet", "csv")])
def test_forecast_long_multivariate(tmp_path, capsys, tiny_checkpoint, pipeline, source, output):
    frame = panel()
    path = tmp_path / f"in.{source}"
    frame.to_csv(path, index=False) if source == "csv" else frame.to_parquet(path, index=False)
    out = tmp_path / f"out.{output}"

    code, stdout, err = cli(capsys, tiny_checkpoint, "forecast",
                            *long_args(path, "--target", "load,temp", "--output", str(out), "--seed", "5"))

    assert code == 0, err
    assert stdout == ""
    assert "3 items" in err and "load, temp" in err
    result = read_back(out)
    assert list(result.columns) == FORECAST_COLUMNS
    assert len(result) == 3 * 2 * H
    assert list(dict.fromkeys(result["item_id"])) == ["north", "007", "south"]  # file order; "007" kept as text
    for item, last in last_stamps(frame).items():
        rows = result[result["item_id"] == item]
        assert list(rows["target_name"]) == ["load"] * H + ["temp"] * H
        expected = list(pd.date_range(last, periods=H + 1, freq="h")[1:]) * 2
        assert list(rows["timestamp"]) == expected
    assert (result["0.1"] <= result["0.5"]).all() and (result["0.5"] <= result["0.9"]).all()
    np.testing.assert_allclose(result["predictions"], result["0.5"])
    # The command runs predict_df with its options: same seed, same numbers.
    direct = pipeline.predict_df(frame, target=["load", "temp"], prediction_length=H, quantile_levels=[0.1, 0.5, 0.9],
                                 num_samples=16, samples_per_batch=256, seed=5)
    np.testing.assert_allclose(result[["predictions", "mean", *LEVELS]].to_numpy(),
                               direct[["predictions", "mean", *LEVELS]].to_numpy(), rtol=1e-6, atol=1e-9)


def test_forecast_long_to_stdout_with_defaults(tmp_path, capsys, tiny_checkpoint):
    """--target alone selects long format; the id and timestamp columns default to item_id and timestamp."""
    path = tmp_path / "in.csv"
    panel().to_csv(path, index=False)

    code, stdout, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(path), "--target", "load",
                            "--prediction-length", str(H), "--quantiles", "0.25,0.75", "--batch-size", "2")

    assert code == 0, err
    result = pd.read_csv(io.StringIO(stdout), dtype={"item_id": str})
    assert list(result.columns) == ["item_id", "timestamp", "target_name", "predictions", "mean", "0.25", "0.75"]
    assert len(result) == 3 * H and set(result["target_name"]) == {"load"}
    assert "loading model" in err and "Traceback" not in err


def test_forecast_long_same_seed_same_output(tmp_path, capsys, tiny_checkpoint):
    path = tmp_path / "in.parquet"
    panel().to_parquet(path)  # with its (unnamed) index stored
    runs = [cli(capsys, tiny_checkpoint, "forecast", *long_args(path, "--target", "load", "--seed", seed))
            for seed in ("3", "3", "4")]
    assert [code for code, _, _ in runs] == [0, 0, 0]
    assert runs[0][1] == runs[1][1] != runs[2][1]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_forecast_with_known_future(tmp_path, capsys, tiny_checkpoint, pipeline, fmt):
    frame = panel(missing_row=False)
    future = pd.concat([
        pd.DataFrame({"item_id": item, "timestamp": pd.date_range(last, periods=H + 1, freq="h")[1:],
                      "price": [2.0, 2.5, 3.0, 3.5]})
        for item, last in last_stamps(frame).items()
    ], ignore_index=True)
    path, future_path = tmp_path / f"in.{fmt}", tmp_path / f"future.{fmt}"
    for data, where in ((frame, path), (future, future_path)):
        data.to_csv(where, index=False) if fmt == "csv" else data.to_parquet(where, index=False)
    out = tmp_path / "out.csv"

    code, _, err = cli(capsys, tiny_checkpoint, "forecast",
                       *long_args(path, "--target", "load", "--future", str(future_path), "--output", str(out)))

    assert code == 0, err
    assert "known future of price" in err
    result = read_back(out)
    assert list(result.columns) == FORECAST_COLUMNS
    assert len(result) == 3 * H and set(result["target_name"]) == {"load"}
    assert list(result["timestamp"]) == list(future["timestamp"])
    direct = pipeline.predict_df(frame, future, target="load", prediction_length=H, quantile_levels=[0.1, 0.5, 0.9],
                                 num_samples=16, samples_per_batch=256, seed=0)
    np.testing.assert_allclose(result["mean"], direct["mean"], rtol=1e-6, atol=1e-9)


# --- backtest ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_backtest_end_to_end(tmp_path, capsys, tiny_checkpoint, pipeline, fmt):
    frame = panel()
    path = tmp_path / f"in.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
    metrics, forecasts, plot = tmp_path / "metrics.csv", tmp_path / f"forecasts.{fmt}", tmp_path / "plot.png"

    code, stdout, err = cli(capsys, tiny_checkpoint, "backtest",
                            *long_args(path, "--target", "load,temp", "--windows", "2", "--stride", "3",
                                       "--seasonality", "6", "--output", str(metrics), "--forecasts", str(forecasts),
                                       "--plot", str(plot), "--plot-item", "007", "--seed", "2"))

    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("backtest: 3 items x 2 windows, horizon 4, stride 3, seasonality 6")
    assert lines[0].endswith(" s")
    assert "Toto" in lines[1] and "seasonal naive" in lines[1] and "ratio" in lines[1]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == set(METRICS)
    for metric in METRICS:
        toto, naive = float(rows[metric][1]), float(rows[metric][2])
        assert np.isfinite(toto) and np.isfinite(naive)
    assert rows["coverage"][3] == "-" and "nominal 0.8" in lines[-1]
    assert float(rows["MASE"][3]) == pytest.approx(float(rows["MASE"][1]) / float(rows["MASE"][2]), rel=2e-3)
    assert "wrote" in err and str(metrics) in err

    table = pd.read_csv(metrics, dtype={"item_id": str})
    assert len(table) == 3 * 2 * 2  # items x windows x targets
    for metric in METRICS:
        assert metric in table.columns and f"seasonal_naive_{metric}" in table.columns
    windows = read_back(forecasts)
    assert {"window", "cutoff", "target_name", "predictions", *LEVELS} <= set(windows.columns)
    assert len(windows) == 3 * 2 * 2 * H
    expected = library_backtest(pipeline, frame, prediction_length=H, windows=2, stride=3, target=["load", "temp"],
                                seasonality=6, num_samples=16, samples_per_batch=256, seed=2)
    np.testing.assert_allclose(table["MASE"], expected.metrics["MASE"], rtol=1e-6)
    png = plot.read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 10_000
    assert leftovers(tmp_path) == []


def test_backtest_defaults_and_table(tmp_path, capsys, tiny_checkpoint):
    """Defaults: item_id, timestamp, target; one window; no files written; the interval is the outer quantiles."""
    path = tmp_path / "in.csv"
    panel().rename(columns={"load": "target"}).to_csv(path, index=False)

    code, stdout, err = cli(capsys, tiny_checkpoint, "backtest", "--input", str(path), "--prediction-length", "3",
                            "--quantiles", "0.05,0.5,0.95")

    assert code == 0, err
    assert stdout.startswith("backtest: 3 items x 1 window, horizon 3, stride 3, seasonality 24;")  # hourly
    assert "nominal 0.9 (0.05 to 0.95 quantiles)" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


# --- errors ------------------------------------------------------------------------------------------------------


def text_file(name: str, text: str):
    def make(tmp_path: Path) -> Path:
        (tmp_path / name).write_bytes(text.encode())
        return tmp_path / name

    return make


def parquet_file(name: str, change):
    def make(tmp_path: Path) -> Path:
        frame = panel()
        change(frame)
        frame.to_parquet(tmp_path / name, index=False)
        return tmp_path / name

    return make


def set_cell(row: int, column: str, value):
    def change(frame):
        if isinstance(value, str):
            frame[column] = frame[column].astype(str)  # a text column, as a careless export makes
        frame.loc[row, column] = value

    return change


ROWS = "".join(f"a,2024-01-01 {h:02d}:00,{h}\n" for h in range(6))
CSV_HEADER = "item_id,timestamp,load\n"


@pytest.mark.parametrize(
    ("make_input", "args", "messages"),
    [
        (text_file("in.csv", CSV_HEADER + ROWS), ["--target", "power"],
         ["in.csv: no column 'power' (--target)", "item_id, timestamp, load"]),
        (text_file("in.csv", "item,timestamp,load\n" + ROWS), ["--target", "load"], ["'item_id' (--id-column)"]),
        # line 1 header, 2-3 rows, 4 blank, 5 row, 6-7 blank, 8 the bad cell
        (text_file("in.csv", CSV_HEADER + "a,2024-01-01 00:00,1\na,2024-01-01 01:00,2\n\na,2024-01-01 02:00,3\n\n\n"
                   "a,2024-01-01 03:00,oops\n"), ["--target", "load"],
         ["in.csv, line 8, column 'load': 'oops' is not a number (item 'a')"]),
        # CRLF line ends, and a quoted cell spanning two lines before the bad cell
        (text_file("in.csv", "item_id,timestamp,load,note\r\na,2024-01-01 00:00,1,\"two\r\nlines\"\r\n"
                   "a,2024-01-01 01:00,2,x\r\na,2024-01-01 02:00,inf,x\r\n"), ["--target", "load"],
         ["in.csv, line 5, column 'load': inf is infinite"]),
        (text_file("in.csv", CSV_HEADER + "a,2024-01-01 00:00,1\nb,2024-01-01 00:00,1\na,soon,2\n"),
         ["--target", "load"], ["in.csv, line 4, column 'timestamp': 'soon' is not a timestamp (item 'a')"]),
        (text_file("in.csv", CSV_HEADER + "a,2024-01-01 00:00,1\n,2024-01-01 01:00,2\n"), ["--target", "load"],
         ["in.csv, line 3, column 'item_id': the item id is empty"]),
        (parquet_file("in.parquet", set_cell(45, "load", "n/a")), ["--target", "load"],
         ["in.parquet, row 46 (index 45), column 'load': 'n/a' is not a number (item '007')"]),
        (parquet_file("in.parquet", set_cell(5, "temp", float("-inf"))), ["--target", "load,temp"],
         ["in.parquet, row 6 (index 5), column 'temp': -inf is infinite"]),
        (text_file("in.csv", CSV_HEADER + ROWS + "a,2024-01-01 03:00,9\n"), ["--target", "load"],
         ["in.csv: duplicate rows for item 'a'"]),
        (text_file("in.txt", CSV_HEADER + ROWS), ["--target", "load"],
         ["in.txt: unsupported file type '.txt'", ".csv, .parquet, .pq"]),
        (text_file("in.parquet", "not parquet at all"), ["--target", "load"], ["in.parquet: cannot read as Parquet"]),
        (lambda tmp_path: tmp_path / "absent.csv", ["--target", "load"], ["absent.csv: cannot read (no such file)"]),
        (text_file("in.csv", ""), ["--target", "load"], ["in.csv: the file is empty"]),
        (text_file("in.csv", CSV_HEADER), ["--target", "load"], ["in.csv: no data rows"]),
        (text_file("in.csv", CSV_HEADER + "a,2024-01-01 00:00,1\na,2024-01-01 01:00,2,3\n"), ["--target", "load"],
         ["in.csv: cannot read as CSV", "line 3"]),
        (text_file("in.csv", CSV_HEADER + ROWS), ["--target", "load", "--quantiles", "0,0.5"],
         ["--quantiles", "strictly between 0 and 1"]),
        (text_file("in.csv", CSV_HEADER + ROWS), ["--target", "load", "--columns", "load"], ["--columns", "--target"]),
        (text_file("in.csv", CSV_HEADER + ROWS), ["--target", "load", "--output", "/nonexistent-folder/out.csv"],
         ["--output"]),
        (text_file("in.csv", CSV_HEADER + ROWS), ["--target", "item_id"], ["must name different columns"]),
    ],
    ids=[
        "missing-target", "missing-id-column", "bad-cell-after-blank-lines", "bad-cell-crlf-quoted-newline",
        "bad-timestamp", "empty-id", "parquet-bad-cell", "parquet-infinite", "duplicate", "unsupported-suffix",
        "unreadable-parquet", "missing-file", "empty-file", "header-only", "ragged-row", "quantile-zero",
        "columns-in-long-mode", "output-folder-missing", "target-is-id",
    ],
)
def test_forecast_long_errors(tmp_path, capsys, tiny_checkpoint, make_input, args, messages):
    path = make_input(tmp_path)
    argv = ["--input", str(path), "--prediction-length", str(H), *args]
    code, out, err = cli(capsys, tiny_checkpoint, "forecast", *argv)
    assert code == 2
    assert out == ""
    assert "toto-compiled forecast: error:" in err and "Traceback" not in err
    for message in messages:
        assert message in err


def test_future_file_errors(tmp_path, capsys, tiny_checkpoint):
    frame = panel(missing_row=False)
    frame.to_csv(tmp_path / "in.csv", index=False)
    rows = [f"{item},{stamp},1.5\n" for item, last in last_stamps(frame).items()
            for stamp in pd.date_range(last, periods=H + 1, freq="h")[1:]]
    rows[6] = rows[6].replace("1.5", "")  # 007's third step: the 8th line of the file
    (tmp_path / "future.csv").write_text("item_id,timestamp,price\n" + "".join(rows))

    code, _, err = cli(capsys, tiny_checkpoint, "forecast",
                       *long_args(tmp_path / "in.csv", "--target", "load", "--future", str(tmp_path / "future.csv")))

    assert code == 2
    assert "future.csv, line 8, column 'price': missing" in err and "(item '007')" in err

    (tmp_path / "future.csv").write_text("item_id,timestamp,price\n" + "".join(rows[:3]))
    code, _, err = cli(capsys, tiny_checkpoint, "forecast",
                       *long_args(tmp_path / "in.csv", "--target", "load", "--future", str(tmp_path / "future.csv")))
    assert code == 2
    assert "error: " + str(tmp_path / "future.csv") + ": item 'north' must have exactly the 4" in err


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (["--windows", "6"], ["in.csv: windows=6: item 'south' has 24 steps"]),
        (["--target", "power"], ["in.csv: no column 'power' (--target)"]),
        (["--plot-item", "007"], ["--plot-item needs --plot"]),
        (["--plot", "{tmp}/p.png", "--plot-item", "west"], ["--plot-item 'west'", "north, 007, south"]),
        (["--plot", "{tmp}/p.nope"], ["--plot", "unsupported image type 'nope'"]),
        (["--quantiles", "0.1,0.5,0.9", "--interval", "0.2,0.9"], ["--interval", "0.2 is not among --quantiles"]),
        (["--output", "{tmp}/same.csv", "--forecasts", "{tmp}/same.csv"], ["must name different files"]),
        (["--quantiles", "0.5,1"], ["--quantiles", "strictly between 0 and 1"]),
    ],
    ids=["too-many-windows", "missing-column", "plot-item-without-plot", "unknown-plot-item", "bad-image-type",
         "interval-not-forecast", "same-output-twice", "quantile-one"],
)
def test_backtest_errors(tmp_path, capsys, tiny_checkpoint, args, messages):
    path = tmp_path / "in.csv"
    panel().to_csv(path, index=False)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    code, out, err = cli(capsys, tiny_checkpoint, "backtest", *long_args(path, "--target", "load", *args))
    assert code == 2 and out == ""
    assert "toto-compiled backtest: error:" in err and "Traceback" not in err
    for message in messages:
        assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_wide_mode_rejects_parquet_output_and_batch_size(tmp_path, capsys, tiny_checkpoint):
    path = tmp_path / "in.csv"
    path.write_text("y\n" + "".join(f"{i % 5}\n" for i in range(30)))
    code, _, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(path), "--prediction-length", "3",
                       "--output", str(tmp_path / "out.parquet"))
    assert code == 2 and "wide mode writes CSV" in err
    code, _, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(path), "--prediction-length", "3",
                       "--batch-size", "4")
    assert code == 2 and "--batch-size is for long format" in err


# --- nothing half-written ----------------------------------------------------------------------------------------


def failing_midway(original):
    """A writer that writes part of its file, then fails as a full disk would."""

    def write(self, path, *args, **kwargs):
        Path(path).write_text("item_id,timestamp\nhalf a ro")
        raise OSError(28, "No space left on device")

    return write


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_forecast_long_output_is_atomic(tmp_path, capsys, tiny_checkpoint, monkeypatch, suffix, existing):
    path = tmp_path / "in.csv"
    panel().to_csv(path, index=False)
    out = tmp_path / f"out.{suffix}"
    if existing:
        out.write_text("the old forecast\n")
    method = "to_csv" if suffix == "csv" else "to_parquet"
    monkeypatch.setattr(pd.DataFrame, method, failing_midway(getattr(pd.DataFrame, method)))

    code, stdout, err = cli(capsys, tiny_checkpoint, "forecast", *long_args(path, "--target", "load", "--output",
                                                                          str(out)))

    assert code == 2 and stdout == ""
    assert f"cannot write {out}" in err and "No space left on device" in err
    assert leftovers(tmp_path) == []
    if existing:
        assert out.read_text() == "the old forecast\n"
    else:
        assert not out.exists()


def test_wide_forecast_output_is_atomic(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    path = tmp_path / "in.csv"
    path.write_text("y\n" + "".join(f"{i % 5}\n" for i in range(30)))
    out = tmp_path / "out.csv"
    out.write_text("the old forecast\n")

    def write_forecast(file, *args):
        file.write("series,step,mean\nload,1,")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(forecast_command, "write_forecast", write_forecast)
    code, _, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(path), "--prediction-length", "3",
                       "--output", str(out))

    assert code == 2 and "cannot write" in err and "No space left on device" in err
    assert out.read_text() == "the old forecast\n"
    assert leftovers(tmp_path) == []

    monkeypatch.undo()
    code, _, err = cli(capsys, tiny_checkpoint, "forecast", "--input", str(path), "--prediction-length", "3",
                       "--output", str(out))
    assert code == 0, err
    assert out.read_text().startswith("series,step,mean,0.1") and leftovers(tmp_path) == []


def test_backtest_outputs_all_or_nothing(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    """The plot fails after the metrics and forecasts are written: none of the three files appears."""
    from matplotlib.figure import Figure

    path = tmp_path / "in.csv"
    panel().to_csv(path, index=False)
    old_metrics = tmp_path / "metrics.csv"
    old_metrics.write_text("old metrics\n")

    def savefig(self, fname, **kwargs):
        Path(fname).write_bytes(PNG_SIGNATURE)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    code, out, err = cli(capsys, tiny_checkpoint, "backtest",
                         *long_args(path, "--target", "load", "--output", str(old_metrics),
                                    "--forecasts", str(tmp_path / "f.parquet"), "--plot", str(tmp_path / "p.png")))

    assert code == 2 and out == ""
    assert f"cannot write {tmp_path / 'p.png'}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "metrics.csv"]
    assert old_metrics.read_text() == "old metrics\n"


def test_staged_outputs(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with frames_io.staged_outputs() as staged:
            staged.write(target, lambda temporary: temporary.write_text("new"))
            assert target.read_text() == "old" and len(leftovers(tmp_path)) == 1
            raise RuntimeError("later failure")
    assert target.read_text() == "old" and leftovers(tmp_path) == []

    umask = os.umask(0o022)
    os.umask(umask)
    with frames_io.staged_outputs() as staged:
        staged.write(target, lambda temporary: temporary.write_text("new"))
        staged.write(tmp_path / "b.csv", lambda temporary: temporary.write_text("b"))
    assert target.read_text() == "new" and (tmp_path / "b.csv").read_text() == "b"
    assert leftovers(tmp_path) == []
    assert (tmp_path / "b.csv").stat().st_mode & 0o777 == 0o666 & ~umask  # a new file's usual mode, not 0600


def test_csv_row_to_line(tmp_path):
    """Blank lines and quoted line breaks (in the header and in cells) keep line numbers exact."""
    path = tmp_path / "in.csv"
    path.write_text('id,"multi\nline"\n\nx,1\n"a\nb",2\n\n\n"c\n\nd",3\ny,4\n')
    data = frames_io.read_data_file(path, text_columns=["id"])
    assert list(data.frame.index) == [1, 2, 5, 6]
    assert [data.line(row) for row in data.frame.index] == [4, 5, 9, 12]
    assert data.frame.at[6, "id"] == "y"
