"""``toto-compiled detect``: wide and long files, outputs, the plot, and usage errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from checkpoints import TINY_TOTO2_CONFIG, write_random_toto2
from cli_run import run_main

from toto import TotoPipeline

pd = pytest.importorskip("pandas")


def command(checkpoint, *args: str) -> list[str]:
    return ["detect", "--model", str(checkpoint), "--device", "cpu", "--no-compile", *args]


@pytest.fixture
def wide_csv(tmp_path):
    rng = np.random.default_rng(0)
    values = 10 + np.sin(np.arange(200) / 4) + rng.normal(0, 0.1, 200)
    values[150] += 30.0
    times = pd.date_range("2026-01-01", periods=200, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    path = tmp_path / "wide.csv"
    pd.DataFrame({"time": times, "cpu": values, "mem": 5 + rng.normal(0, 0.1, 200)}).to_csv(path, index=False)
    return path, values


def test_wide_csv_scores_equal_the_pipelines_and_the_spike_is_flagged(capsys, tiny_checkpoint, wide_csv, tmp_path):
    path, values = wide_csv
    code, out, err = run_main(capsys, command(tiny_checkpoint, "--input", str(path), "--timestamp-column", "time",
                                              "--false-alarm-rate", "0.01", "--plot", str(tmp_path / "p.png")))  # fmt: skip
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == ["time", "target_name", "value", "nll", "tail_probability", "anomaly"]
    cpu = frame[frame["target_name"] == "cpu"]
    assert cpu["anomaly"].to_numpy().nonzero()[0].tolist() == [150]
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)
    table = pd.read_csv(path)
    (scores,) = pipeline.detect_anomalies(table[["cpu", "mem"]].to_numpy(np.float32).T[None], false_alarm_rate=0.01)
    np.testing.assert_allclose(cpu["nll"].to_numpy(), scores.nll[0], rtol=1e-5, equal_nan=True)
    assert "1 flagged" in err and (tmp_path / "p.png").stat().st_size > 1000


def test_long_parquet_with_output_and_plot(capsys, tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"item_id": np.repeat(["a", "b"], 100), "timestamp": np.tile(np.arange(100), 2),
                          "target": rng.normal(0, 1, 200)})  # fmt: skip
    frame.loc[170, "target"] = 40.0
    frame.to_parquet(tmp_path / "long.parquet")
    code, _, err = run_main(capsys, command(tiny_checkpoint, "--input", str(tmp_path / "long.parquet"),
                                            "--output", str(tmp_path / "out.parquet"), "--plot", str(tmp_path / "b.png"),
                                            "--plot-item", "b"))  # fmt: skip
    assert code == 0, err
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert len(out) == 200 and out.loc[(out["item_id"] == "b") & (out["timestamp"] == 70), "anomaly"].item()
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_usage_errors(capsys, tiny_checkpoint, wide_csv, tmp_path):
    path, _ = wide_csv
    for args, message in [
        (["--plot-item", "a", "--plot", str(tmp_path / "x.png")], "--plot-item needs --plot and long format"),
        (["--false-alarm-rate", "1"], "--false-alarm-rate: expected a number in (0, 1)"),
        (["--id-column", "time", "--columns", "cpu"], "--columns is for wide CSV"),
        (["--output", str(tmp_path / "x.parquet")], "wide mode writes CSV"),
    ]:
        code, _, err = run_main(capsys, command(tiny_checkpoint, "--input", str(path), *args))
        assert code == 2 and message in err, (args, err)


def test_a_toto2_model_is_scored_approximately(capsys, wide_csv, tmp_path):
    path, _ = wide_csv
    toto2 = write_random_toto2(tmp_path / "toto2", TINY_TOTO2_CONFIG)
    code, out, err = run_main(capsys, command(toto2, "--input", str(path), "--timestamp-column", "time"))
    assert code == 0 and "Toto 2.0 has no density" in err
    frame = pd.read_csv(io.StringIO(out))
    assert frame["nll"].isna().all() and frame["tail_probability"].notna().sum() > 300
