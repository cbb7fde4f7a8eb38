"""``toto-compiled forecast``: CSV in, long-format forecast CSV out (tiny model, CPU, no compile)."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_run import cli
from toto import TotoPipeline
from toto.cli import build_parser
from toto.commands import forecast as forecast_command
from toto.commands.options import sampling_options
from toto.families import Toto1Family
from toto.checkpoints.reading import DEFAULT_MODEL_ID

H = 20  # more than one tiny patch (16), so a decode step runs
N = 40  # context rows


def wave(i: int, phase: float = 0.0) -> float:
    return round(10 + 3 * math.sin(i / 4 + phase), 4)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    # csv.writer quotes a lone empty cell (""), which a blank line, skipped on reading, is not.
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    return path


def forecast(capsys, checkpoint: Path, *args: str) -> tuple[int, str, str]:
    return cli(capsys, checkpoint, "forecast", *args)


def parse(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames), list(reader)


def stats(row: dict[str, str]) -> list[float]:
    return [float(v) for k, v in row.items() if k not in ("series", "step", "timestamp")]


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


def test_single_column_with_iso_timestamps(tmp_path, capsys, tiny_checkpoint):
    start, step = datetime(2024, 1, 1, 23), timedelta(minutes=15)
    rows = [[(start + i * step).isoformat(), wave(i)] for i in range(N)]
    path = write_csv(tmp_path / "in.csv", ["time", "load"], rows)

    code, out, err = forecast(capsys, tiny_checkpoint, "--input", str(path), "--timestamp-column", "time",
                              "--prediction-length", str(H))

    assert code == 0, err
    header, records = parse(out)
    assert header == ["series", "step", "timestamp", "mean", "0.1", "0.5", "0.9"]
    assert len(records) == H
    assert [r["series"] for r in records] == ["load"] * H
    assert [int(r["step"]) for r in records] == list(range(1, H + 1))
    # The forecast continues the input's 15-minute grid from its last row, across midnight.
    assert [r["timestamp"] for r in records] == [(start + (N - 1 + k) * step).isoformat() for k in range(1, H + 1)]
    for r in records:
        mean, q10, q50, q90 = stats(r)
        assert math.isfinite(mean)
        assert q10 <= q50 <= q90


@pytest.mark.parametrize(
    ("stamps", "expected"),
    [
        # epoch seconds: numbers out
        ([1_700_000_000 + 60 * i for i in range(N)], [str(1_700_000_000 + 60 * (N - 1 + k)) for k in range(1, 4)]),
        # irregular: 0, 10, ..., 380, then 415; the median gap (10 s), not the mean (10.6 s), is the step
        ([10 * i for i in range(N - 1)] + [415], ["425", "435", "445"]),
        # dates only, daily, across a leap day: dates out
        ([(datetime(2024, 2, 28) + timedelta(days=i - N + 2)).date().isoformat() for i in range(N)],
         ["2024-03-01", "2024-03-02", "2024-03-03"]),
        # time zone and the space separator are kept
        ([f"2024-06-0{1 + i // 24} {i % 24:02d}:00:00+02:00" for i in range(N)],
         ["2024-06-02 16:00:00+02:00", "2024-06-02 17:00:00+02:00", "2024-06-02 18:00:00+02:00"]),
    ],
    ids=["epoch", "median-step", "dates", "timezone"],
)
def test_future_timestamps(tmp_path, capsys, tiny_checkpoint, stamps, expected):
    path = write_csv(tmp_path / "in.csv", ["t", "y"], [[s, wave(i)] for i, s in enumerate(stamps)])

    code, out, err = forecast(capsys, tiny_checkpoint, "--input", str(path), "--timestamp-column", "t",
                              "--prediction-length", "3")

    assert code == 0, err
    assert [r["timestamp"] for r in parse(out)[1]] == expected


def test_multivariate_matches_the_pipeline(tmp_path, capsys, tiny_checkpoint, pipeline):
    names = ["cpu", "mem", "disk"]
    values = [[wave(i, phase=p) for p in (0.0, 1.0, 2.0)] for i in range(N)]
    path = write_csv(tmp_path / "in.csv", ["ts", *names], [[600 * i, *v] for i, v in enumerate(values)])

    code, out, err = forecast(capsys, tiny_checkpoint, "--input", str(path), "--timestamp-column", "ts",
                              "--prediction-length", str(H), "--quantiles", "0.05,0.5", "--seed", "7")

    assert code == 0, err
    header, records = parse(out)
    assert header == ["series", "step", "timestamp", "mean", "0.05", "0.5"]
    assert len(records) == H * len(names)
    assert [r["series"] for r in records] == [name for name in names for _ in range(H)]
    # Same series through the library: columns are variates, in order, of one multivariate series.
    context = torch.tensor(values, dtype=torch.float32).T[None]
    samples = pipeline.predict(context, H, num_samples=16, samples_per_batch=16, time_interval_seconds=600, seed=7)[0]
    paths = samples.samples[0]  # (variates, H, samples)
    expected = np.stack([paths.mean(-1), *np.quantile(paths, [0.05, 0.5], axis=-1)], axis=-1).reshape(-1, 3)
    np.testing.assert_allclose([stats(r) for r in records], expected, rtol=1e-5, atol=1e-5)


def test_missing_cells_are_masked(tmp_path, capsys, tiny_checkpoint, pipeline):
    spellings = ["", "nan", "NaN", "NA", "null", "n/a"]  # as pandas reads them, in long files too
    holes = {3: 0, 8: 1, 15: 2, 16: 3, 30: 4, 31: 5}  # row -> spelling
    cells = [spellings[holes[i]] if i in holes else wave(i) for i in range(N)]
    path = write_csv(tmp_path / "in.csv", ["y"], [[c] for c in cells])

    code, out, err = forecast(capsys, tiny_checkpoint, "--input", str(path), "--prediction-length", str(H))

    assert code == 0, err
    header, records = parse(out)
    assert "timestamp" not in header and len(records) == H
    assert all(math.isfinite(x) for r in records for x in stats(r))
    context = torch.tensor([math.nan if i in holes else wave(i) for i in range(N)])
    paths = pipeline.predict(context, H, num_samples=16, samples_per_batch=16, seed=0)[0].samples[0, 0]
    np.testing.assert_allclose([float(r["mean"]) for r in records], paths.mean(-1), rtol=1e-5, atol=1e-5)


def test_columns_subset_without_timestamps(tmp_path, capsys, tiny_checkpoint):
    rows = [[wave(i), "label", wave(i, 1.0), wave(i, 2.0)] for i in range(N)]
    path = write_csv(tmp_path / "in.csv", ["a", "note", "b", "c"], rows)

    code, out, err = forecast(capsys, tiny_checkpoint, "--input", str(path), "--columns", "c, a",
                              "--prediction-length", "5")

    assert code == 0, err
    header, records = parse(out)
    assert header == ["series", "step", "mean", "0.1", "0.5", "0.9"]
    assert [r["series"] for r in records] == ["c"] * 5 + ["a"] * 5


def test_status_goes_to_stderr_and_only_csv_to_stdout(tmp_path, capsys, tiny_checkpoint):
    path = write_csv(tmp_path / "in.csv", ["t", "y"], [[60 * i, wave(i)] for i in range(N)])

    # 4 sample batches of one decode step each (H=20 is two patches of 16).
    code, out, err = forecast(capsys, tiny_checkpoint, "--input", str(path), "--timestamp-column", "t",
                              "--prediction-length", str(H), "--samples-per-batch", "4")

    assert code == 0, err
    assert out.splitlines()[0].startswith("series,step,") and len(out.splitlines()) == H + 1
    lines = err.splitlines()
    assert any(line.startswith("loading model") for line in lines)
    assert any(f"{N} rows" in line and "1 columns" in line and "60 s" in line for line in lines)
    assert lines[-1] == "decoding: 4/4 patches"


def test_same_seed_same_output(tmp_path, capsys, tiny_checkpoint):
    path = write_csv(tmp_path / "in.csv", ["y"], [[wave(i)] for i in range(N)])
    runs = [forecast(capsys, tiny_checkpoint, "--input", str(path), "--prediction-length", str(H), "--seed", seed)
            for seed in ("3", "3", "4")]
    assert [code for code, _, _ in runs] == [0, 0, 0]
    assert runs[0][1] == runs[1][1]
    assert runs[0][1] != runs[2][1]


def _csv(text: str):
    """An input maker for the error table: ``tmp_path -> in.csv`` holding ``text``."""

    def make(tmp_path: Path) -> Path:
        (tmp_path / "in.csv").write_text(text)
        return tmp_path / "in.csv"

    return make


GOOD = "t,a,b\n" + "".join(f"{i},{wave(i)},{wave(i, 1)}\n" for i in range(N))


@pytest.mark.parametrize(
    ("make_input", "args", "messages"),
    [
        (lambda tmp_path: tmp_path / "absent.csv", [], ["absent.csv", "cannot read"]),
        (_csv(""), [], ["in.csv", "empty"]),
        (_csv("t,a\n"), [], ["in.csv", "no data rows"]),
        (_csv(GOOD), ["--columns", "a,zz"], ["'zz'", "t, a, b"]),
        (_csv(GOOD), ["--timestamp-column", "when"], ["'when'", "t, a, b"]),
        # the bad cell is on the 5th line of the file (header + 3 good rows before it)
        (_csv("t,a\n0,1\n1,2\n2,3\n3,oops\n4,5\n"), ["--timestamp-column", "t"], ["in.csv", "line 5", "'a'", "oops"]),
        (_csv("t,a\n0,1\n1,2\n\n2,x\n"), ["--timestamp-column", "t"], ["line 5", "'a'"]),  # blank lines count
        (_csv("t,a\n0,1\n5,2\n5,3\n9,4\n"), ["--timestamp-column", "t"], ["'t'", "line 4", "increasing"]),
        (_csv("t,a\n2024-01-02,1\n2024-01-01,2\n"), ["--timestamp-column", "t"], ["line 3", "increasing"]),
        (_csv("t,a\n2024-01-01,1\nsoon,2\n"), ["--timestamp-column", "t"], ["line 3", "'t'", "soon"]),
        (_csv("t,a\n0,\n1,NA\n"), ["--timestamp-column", "t", "--columns", "a"], ["'a'", "no values"]),
        (_csv("t,a\n0,1\n1,2,3\n"), [], ["line 3", "3 fields"]),
        (_csv(GOOD), ["--quantiles", "0.1,1.5"], ["--quantiles", "1.5"]),
        (_csv(GOOD), ["--quantiles", "0.1,median"], ["--quantiles", "median"]),
        (_csv(GOOD), ["--prediction-length", "0"], ["--prediction-length"]),
        (_csv(GOOD), ["--num-samples", "-3"], ["--num-samples"]),
        (_csv("t,a\n0,1\n"), ["--timestamp-column", "t"], ["'t'", "two rows"]),
        (_csv("t,a\n2024-01-01T00:00,1\n2024-01-01T01:00+00:00,2\n"), ["--timestamp-column", "t"], ["time zone"]),
        (_csv("a,b,a\n1,2,3\n"), [], ["repeats", "a, b, a"]),
        (_csv(GOOD), ["--timestamp-column", "t", "--columns", "t,a"], ["'t'", "timestamp column"]),
        (_csv(GOOD), ["--columns", "a,,b"], ["--columns"]),
        (_csv(GOOD), ["--output", "/nonexistent-folder/out.csv"], ["--output"]),
        (_csv(GOOD), ["--output", "."], ["--output"]),
    ],
    ids=[
        "missing-file", "empty-file", "header-only", "unknown-column", "unknown-timestamp-column",
        "non-numeric-cell", "non-numeric-after-blank-line", "repeated-timestamp", "decreasing-dates",
        "bad-timestamp", "all-missing-column", "ragged-row", "quantile-out-of-range", "quantile-not-number",
        "zero-prediction-length", "negative-num-samples", "single-timestamp", "mixed-time-zones",
        "duplicate-header", "timestamp-as-value", "empty-column-name", "output-folder-missing", "output-is-folder",
    ],
)
def test_user_errors(tmp_path, capsys, tiny_checkpoint, make_input, args, messages):
    base = ["--input", str(make_input(tmp_path)), "--prediction-length", "4"]
    code, out, err = forecast(capsys, tiny_checkpoint, *base, *args)
    assert code == 2
    assert out == ""
    assert "toto-compiled forecast: error:" in err and "Traceback" not in err
    for message in messages:
        assert message in err


def test_unloadable_model(tmp_path, capsys):
    path = write_csv(tmp_path / "in.csv", ["y"], [[wave(i)] for i in range(N)])
    code, out, err = forecast(capsys, tmp_path / "no-model-here", "--input", str(path), "--prediction-length", "4")
    assert code == 2 and out == ""
    assert "cannot load model" in err and "no-model-here" in err and "Traceback" not in err


def test_defaults():
    args = build_parser().parse_args(["forecast", "--input", "x.csv", "--prediction-length", "5"])
    assert args.model == DEFAULT_MODEL_ID
    assert (args.num_samples, args.samples_per_batch, args.seed) == (None, None, None)  # per model family:
    assert sampling_options(args, Toto1Family) == {"num_samples": 256, "samples_per_batch": 256, "seed": 0}
    assert [level for _, level in args.quantiles] == [0.1, 0.5, 0.9]
    assert args.compile is None  # TOTO_COMPILE decides
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert build_parser().parse_args(["forecast", "--input", "x", "--prediction-length", "1", "--compile"]).compile


def test_progress_is_throttled(monkeypatch, capsys):
    clock = iter([0.0, 0.5, 1.0, 2.5, 3.0, 3.1])  # creation, then one reading per call
    monkeypatch.setattr(forecast_command.time, "monotonic", lambda: next(clock))
    report = forecast_command._progress_printer()
    for done in range(1, 6):
        report(done, 5)
    # 0.5 s and 1.0 s are too soon; 2.5 s is due; 3.0 s is too soon again; the last call always prints.
    assert capsys.readouterr().err.splitlines() == ["decoding: 3/5 patches", "decoding: 5/5 patches"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_requested_without_cuda(tmp_path, capsys, tiny_checkpoint):
    path = write_csv(tmp_path / "in.csv", ["y"], [[wave(i)] for i in range(N)])
    code, _, err = forecast(capsys, tiny_checkpoint, "--input", str(path), "--prediction-length", "4",
                            "--device", "cuda")
    assert code == 2 and "--device cuda" in err and "CUDA is not available" in err


@pytest.mark.parametrize("columns", [["sales"], ["sales", "visits"]], ids=["single", "multiple"])
def test_console_script_end_to_end(tmp_path, tiny_checkpoint, columns):
    path = write_csv(tmp_path / "in.csv", ["day", *columns],
                     [[(datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(days=i)).isoformat(),
                       *(wave(i, phase=j) for j in range(len(columns)))]
                      for i in range(N)])
    output = tmp_path / "out.csv"
    script = Path(sys.executable).with_name("toto-compiled")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "toto.cli"]
    result = subprocess.run(
        [*command, "forecast", "--model", str(tiny_checkpoint), "--input", str(path), "--timestamp-column", "day",
         "--prediction-length", "3", "--num-samples", "8", "--device", "cpu", "--no-compile", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    header, records = parse(output.read_text())
    assert header == ["series", "step", "timestamp", "mean", "0.1", "0.5", "0.9"]
    assert [r["series"] for r in records] == [name for name in columns for _ in range(3)]
    expected = [f"2024-02-{10 + k}T00:00:00+00:00" for k in range(3)]
    assert [r["timestamp"] for r in records] == expected * len(columns)
    for r in records:
        assert float(r["0.1"]) <= float(r["0.5"]) <= float(r["0.9"]) and math.isfinite(float(r["mean"]))
