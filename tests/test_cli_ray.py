"""``toto-compiled forecast`` and ``backtest`` with ``--engine ray`` (tiny model, CPU, no compile).

The Ray runs share the session's ``ray_cluster`` (so the command finds Ray initialized and
joins it); each costs seconds, so there are few, and each checks a lot. Usage errors are
found before Ray is touched; the unreachable address runs in a fresh process, where Ray is
not initialized yet.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from tests.cli_run import cli  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster per session, on one worker

H = 3
KEYS = ["item_id", "timestamp", "target_name"]
VALUES = ["predictions", "mean", "0.1", "0.5", "0.9"]
METRICS = ("MASE", "WQL", "MAE", "RMSE", "coverage")
REPO = Path(__file__).resolve().parent.parent
RAY_LOG_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\(")  # "(raylet) ...", "(pid=...) ...": Ray's log monitor


def panel() -> pd.DataFrame:
    """12 hourly items of ragged lengths and starts, without gaps; text ids."""
    parts = []
    for n in range(12):
        length = 14 + 3 * (n % 5)
        t = np.arange(length)
        parts.append(pd.DataFrame({
            "item_id": f"item{n:02d}",
            "timestamp": pd.date_range("2024-03-01", periods=length, freq="h") + pd.Timedelta(hours=n),
            "target": np.round(10 + 3 * np.sin(t / 3 + n) + 0.1 * n, 4),
        }))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture
def parquet_input(tmp_path) -> Path:
    path = tmp_path / "in.parquet"
    panel().to_parquet(path, index=False)
    return path


def args(path: Path, *more: str) -> list[str]:
    return ["--input", str(path), "--prediction-length", str(H), "--batch-size", "4", "--seed", "7", *more]


def sorted_rows(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    for column in ("timestamp", "cutoff"):  # the time unit may differ (Ray writes what Arrow holds)
        if column in frame.columns:
            frame = frame.assign(**{column: pd.to_datetime(frame[column]).astype("datetime64[ns]")})
    return frame.sort_values(keys).reset_index(drop=True)


def assert_same_rows(ours: pd.DataFrame, theirs: pd.DataFrame, keys: list[str], values: list[str]) -> None:
    ours, theirs = sorted_rows(ours, keys), sorted_rows(theirs, keys)
    assert list(ours.columns) == list(theirs.columns)
    for key in keys:
        assert ours[key].tolist() == theirs[key].tolist(), key
    np.testing.assert_allclose(ours[values].to_numpy(float), theirs[values].to_numpy(float), rtol=1e-6)


def own_lines(err: str) -> list[str]:
    """stderr without the lines that Ray's log monitor prints from its own thread while Ray runs in this process."""
    return [line for line in err.splitlines() if not RAY_LOG_LINE.match(line)]


def table(stdout: str) -> dict[str, list[float]]:
    """The summary table's metric rows: metric -> [Toto, seasonal naive]."""
    return {line.split()[0]: [float(x) for x in line.split()[1:3]] for line in stdout.splitlines()[2:]}


# --- Ray runs ----------------------------------------------------------------------------------------------------


def test_forecast_ray_equals_local(tmp_path, capsys, tiny_checkpoint, ray_cluster, parquet_input):
    local = tmp_path / "local.parquet"
    code, _, err = cli(capsys, tiny_checkpoint, "forecast", *args(parquet_input, "--output", str(local)))
    assert code == 0, err
    folder = tmp_path / "ray-out"

    code, stdout, err = cli(capsys, tiny_checkpoint, "forecast",
                            *args(parquet_input, "--engine", "ray", "--workers", "2", "--output", str(folder)))

    assert code == 0, err
    assert stdout == "" and "2 workers" in err and f"wrote {folder}" in err
    assert folder.is_dir() and any(folder.glob("*.parquet"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    result = pd.read_parquet(folder)
    assert len(result) == 12 * H
    assert_same_rows(result, pd.read_parquet(local), KEYS, VALUES)


def test_backtest_ray_equals_local(tmp_path, capsys, tiny_checkpoint, ray_cluster, parquet_input):
    more = ["--windows", "2", "--stride", "2", "--seasonality", "2", "--quantiles", "0.1,0.5,0.9"]
    local_metrics, local_forecasts = tmp_path / "local-metrics.csv", tmp_path / "local-forecasts.parquet"
    code, local_out, err = cli(capsys, tiny_checkpoint, "backtest",
                               *args(parquet_input, *more, "--output", str(local_metrics),
                                     "--forecasts", str(local_forecasts)))
    assert code == 0, err
    metrics, forecasts = tmp_path / "metrics.csv", tmp_path / "forecasts"

    code, stdout, err = cli(capsys, tiny_checkpoint, "backtest",
                            *args(parquet_input, *more, "--engine", "ray", "--workers", "2",
                                  "--output", str(metrics), "--forecasts", str(forecasts)))

    assert code == 0, err
    header, local_header = stdout.splitlines()[0], local_out.splitlines()[0]
    assert header.rsplit(";", 1)[0] == local_header.rsplit(";", 1)[0]  # all but the time taken
    assert stdout.splitlines()[1] == local_out.splitlines()[1]
    ours, theirs = table(stdout), table(local_out)
    assert set(ours) == set(METRICS)
    for metric in METRICS:
        np.testing.assert_allclose(ours[metric], theirs[metric], rtol=1e-6, atol=1e-4, err_msg=metric)  # 4 decimals
    read = {"dtype": {"item_id": str}}
    scores = [f"{prefix}{metric}" for metric in METRICS for prefix in ("", "seasonal_naive_")]
    assert_same_rows(pd.read_csv(metrics, **read), pd.read_csv(local_metrics, **read),
                     ["item_id", "window", "target_name"], scores)
    assert forecasts.is_dir()
    window_keys = ["item_id", "window", "timestamp", "target_name"]
    assert_same_rows(pd.read_parquet(forecasts), pd.read_parquet(local_forecasts), window_keys, VALUES)
    assert f"wrote {forecasts} (--forecasts)" in err


def test_ray_input_errors(tmp_path, capsys, tiny_checkpoint, ray_cluster, parquet_input):
    """Errors that the distributed functions find before any model worker starts: one line, exit 2."""
    cases = [
        (args(parquet_input, "--target", "power"), [str(parquet_input), "missing column 'power'"]),
        (args(tmp_path / "absent.parquet"), [str(tmp_path / "absent.parquet"), "does not exist"]),
    ]
    for argv, messages in cases:
        code, out, err = cli(capsys, tiny_checkpoint, "forecast",
                             *argv, "--engine", "ray", "--output", str(tmp_path / "out"))
        assert code == 2 and out == ""
        last = own_lines(err)[-1]
        assert last.startswith("toto-compiled forecast: error: ") and "Traceback" not in err
        for message in messages:
            assert message in last
    assert not (tmp_path / "out").exists()


# --- errors without Ray ------------------------------------------------------------------------------------------


def test_unreachable_address(tmp_path, parquet_input, tiny_checkpoint):
    """In a fresh process (Ray not initialized): one stderr line naming the address, within seconds."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "toto.cli", "backtest", "--input", str(parquet_input), "--prediction-length", "3",
         "--model", str(tiny_checkpoint), "--engine", "ray", "--ray-address", "127.0.0.1:9"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("toto-compiled backtest: error: ") and "127.0.0.1:9" in lines[0]


@pytest.mark.parametrize(
    ("command", "more", "message"),
    [
        ("forecast", ["--engine", "ray", "--output", "{tmp}/out"], "long format only"),  # a wide CSV
        ("forecast", ["--engine", "ray", "--target", "y", "--future", "{tmp}/in.csv", "--output", "{tmp}/out"],
         "--future is not supported with --engine ray"),
        ("forecast", ["--engine", "ray", "--target", "y"], "--engine ray needs --output"),
        ("forecast", ["--engine", "ray", "--target", "y", "--output", "{tmp}"], "already exists"),
        ("forecast", ["--engine", "ray", "--target", "y", "--output", "{tmp}/out.csv"], "not CSV"),
        ("forecast", ["--target", "y", "--workers", "2"], "--workers is for --engine ray"),
        ("backtest", ["--target", "y", "--ray-address", "auto"], "--ray-address is for --engine ray"),
        ("backtest", ["--target", "y", "--gpus-per-worker", "1"], "--gpus-per-worker is for --engine ray"),
        ("backtest", ["--engine", "ray", "--target", "y", "--plot", "{tmp}/p.png"],
         "--plot is not supported with --engine ray"),
        ("backtest", ["--engine", "ray", "--target", "y", "--forecasts", "{tmp}"], "already exists"),
    ],
    ids=["wide", "future", "no-output", "output-exists", "output-csv", "workers-local", "address-local",
         "gpus-local", "plot", "forecasts-exists"],
)
def test_usage_errors(tmp_path, capsys, tiny_checkpoint, command, more, message):
    path = tmp_path / "in.csv"
    path.write_text("y\n" + "".join(f"{i % 5}\n" for i in range(30)))
    more = [arg.replace("{tmp}", str(tmp_path)) for arg in more]
    code, out, err = cli(capsys, tiny_checkpoint, command, "--input", str(path), "--prediction-length", "3", *more)
    assert code == 2 and out == ""
    lines = own_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"toto-compiled {command}: error: ") and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
