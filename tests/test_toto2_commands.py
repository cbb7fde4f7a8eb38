"""The commands on a Toto 2.0 checkpoint: forecast (wide and long) and backtest write its
quantiles; the sampling options are usage errors for a quantile model."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from checkpoints import TINY_TOTO2_CONFIG, write_random_toto2
from cli_run import run_main

from toto import TotoPipeline


@pytest.fixture(scope="module")
def toto2_checkpoint(tmp_path_factory):
    return write_random_toto2(tmp_path_factory.mktemp("toto2"), TINY_TOTO2_CONFIG, seed=5)


def command(checkpoint, name: str, *args: str) -> list[str]:
    return [name, "--model", str(checkpoint), "--device", "cpu", "--no-compile", *args]


@pytest.fixture
def wide_csv(tmp_path):
    path = tmp_path / "wide.csv"
    values = 10 + np.sin(np.arange(80) / 3)
    path.write_text("a\n" + "\n".join(f"{v:.6f}" for v in values) + "\n")
    return path, values


def test_forecast_writes_the_knots_and_the_median(capsys, toto2_checkpoint, wide_csv):
    path, values = wide_csv
    code, out, err = run_main(capsys, command(toto2_checkpoint, "forecast", "--input", str(path),
                                              "--prediction-length", "6", "--quantiles", "0.1,0.25,0.9"))  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["step"] for r in rows] == [str(i) for i in range(1, 7)]
    pipeline = TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")
    knots = pipeline.predict(values.astype(np.float32), 6)[0].quantiles[0, 0]
    np.testing.assert_allclose([float(r["mean"]) for r in rows], knots[:, 4], rtol=1e-5)
    np.testing.assert_allclose([float(r["0.1"]) for r in rows], knots[:, 0], rtol=1e-5)
    np.testing.assert_allclose([float(r["0.25"]) for r in rows], (knots[:, 1] + knots[:, 2]) / 2, rtol=1e-5)


@pytest.mark.parametrize("option", [["--num-samples", "8"], ["--samples-per-batch", "8"], ["--seed", "1"]])
def test_sampling_options_are_usage_errors(capsys, toto2_checkpoint, wide_csv, option):
    path, _ = wide_csv
    code, _, err = run_main(capsys, command(toto2_checkpoint, "forecast", "--input", str(path),
                                            "--prediction-length", "6", *option))  # fmt: skip
    assert code == 2 and f"{option[0]}: Toto 2.0 forecasts quantiles; it draws no samples" in err


def test_long_forecast_and_backtest_run(capsys, toto2_checkpoint, tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"item_id": ["x"] * 90 + ["y"] * 70,
                          "timestamp": [*pd.date_range("2024-01-01", periods=90, freq="D"),
                                        *pd.date_range("2024-02-01", periods=70, freq="D")],
                          "target": np.concatenate([np.arange(90.0), 5 + np.cos(np.arange(70.0))])})  # fmt: skip
    path = tmp_path / "long.csv"
    frame.to_csv(path, index=False)
    code, out, err = run_main(capsys, command(toto2_checkpoint, "forecast", "--input", str(path), "--id-column",
                                              "item_id", "--prediction-length", "4"))  # fmt: skip
    assert code == 0, err
    forecast = pd.read_csv(io.StringIO(out))
    assert len(forecast) == 8 and (forecast["predictions"] == forecast["mean"]).all()
    code, out, err = run_main(capsys, command(toto2_checkpoint, "backtest", "--input", str(path), "--id-column",
                                              "item_id", "--prediction-length", "4", "--windows", "2"))  # fmt: skip
    assert code == 0, err
    assert "MASE" in out and "WQL" in out


def test_export_writes_random_toto2_sizes_and_copies_toto2_checkpoints(capsys, tmp_path, toto2_checkpoint):
    code, out, err = run_main(capsys, ["export", "--random-weights", str(tmp_path / "r"), "--size", "toto2-4m"])
    assert code == 0, err
    assert "RANDOM weights" in err
    pipeline = TotoPipeline.from_pretrained(str(tmp_path / "r"), device_map="cpu")
    assert pipeline.family.name == "Toto 2.0"
    assert round(sum(p.numel() for p in pipeline.model.parameters()) / 1e6) == 4  # "4m": the size in its name
    code, _, err = run_main(capsys, ["export", str(toto2_checkpoint), str(tmp_path / "copy")])
    assert code == 0, err
    assert (tmp_path / "copy" / "config.json").read_text() == (toto2_checkpoint / "config.json").read_text()


def test_check_runs_on_a_toto2_checkpoint(capsys, toto2_checkpoint, monkeypatch):
    monkeypatch.setenv("TOTO_COMPILE_BACKEND", "aot_eager")  # the rows and their plumbing, not inductor's kernels
    code, out, err = run_main(capsys, ["check", "--quick", "--model", str(toto2_checkpoint), "--device", "cpu"])
    assert code == 0, out + err[-2000:]
    assert "9 quantiles (Toto 2.0)" in out and "All checks PASSED" in out
    assert "quantile difference (max rel.)" in out


def test_finetune_trains_a_toto2_checkpoint(capsys, toto2_checkpoint, tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    stamps = pd.date_range("2024-01-01", periods=300, freq="h")
    frame = pd.concat([pd.DataFrame({"item_id": f"s{i}", "timestamp": stamps,
                                     "target": 10 + 3 * np.sin(np.arange(300) / 4 + i) + rng.normal(0, 0.3, 300)})
                       for i in range(3)])  # fmt: skip
    frame.to_csv(tmp_path / "long.csv", index=False)
    code, _, err = run_main(capsys, ["finetune", "--model", str(toto2_checkpoint),
                                     "--input", str(tmp_path / "long.csv"), "--output", str(tmp_path / "out"),
                                     "--prediction-length", "32", "--context-length", "64", "--steps", "3",
                                     "--batch-size", "4", "--no-compile", "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0, err
    tuned = TotoPipeline.from_pretrained(str(tmp_path / "out"), device_map="cpu")
    assert tuned.family.name == "Toto 2.0"
    original = TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")
    assert not np.array_equal(tuned.predict(np.arange(64.0), 8)[0].quantiles,
                              original.predict(np.arange(64.0), 8)[0].quantiles)  # fmt: skip


def test_decode_block_size_option(capsys, toto2_checkpoint, wide_csv, tiny_checkpoint):
    path, values = wide_csv
    base = command(toto2_checkpoint, "forecast", "--input", str(path), "--prediction-length", "40")
    code, one_block, err = run_main(capsys, [*base, "--decode-block-size", "none"])
    assert code == 0, err
    code, patches, err = run_main(capsys, [*base, "--decode-block-size", "16"])
    assert code == 0, err
    pipeline = TotoPipeline.from_pretrained(str(toto2_checkpoint), device_map="cpu")
    pipeline.decode_block_size = None
    median = [float(r["mean"]) for r in csv.DictReader(io.StringIO(one_block))]
    np.testing.assert_allclose(median, pipeline.predict(values.astype(np.float32), 40)[0].quantiles[0, 0, :, 4],
                               rtol=1e-5)  # fmt: skip
    assert one_block != patches  # blocks of one patch feed medians back: another forecast
    code, _, err = run_main(capsys, [*base, "--decode-block-size", "20"])
    assert code == 2 and "--decode-block-size (20) must be a multiple of the patch size (16)" in err
    code, _, err = run_main(capsys, [*command(tiny_checkpoint, "forecast", "--input", str(path),
                                              "--prediction-length", "4"), "--decode-block-size", "16"])  # fmt: skip
    assert code == 2 and "--decode-block-size: Toto 1.0 decodes one patch at a time" in err


def test_decode_block_size_is_checked_before_the_ray_engine_starts(capsys, toto2_checkpoint, tiny_checkpoint, tmp_path):
    """The driver checks the size against config.json alone: a usage error before any cluster starts
    (the Ray test in test_distributed.py runs the workers with it)."""
    path = tmp_path / "long.csv"
    path.write_text("item_id,timestamp,target\n" + "".join(f"a,{t},{t % 5}\n" for t in range(40)))
    ray_args = ["--input", str(path), "--prediction-length", "16", "--id-column", "item_id",
                "--output", str(tmp_path / "out"), "--engine", "ray"]  # fmt: skip
    code, _, err = run_main(capsys, [*command(toto2_checkpoint, "forecast", *ray_args), "--decode-block-size", "20"])
    assert code == 2 and "--decode-block-size (20) must be a multiple of the patch size (16)" in err
    code, _, err = run_main(capsys, [*command(tiny_checkpoint, "forecast", *ray_args), "--decode-block-size", "16"])
    assert code == 2 and "--decode-block-size: Toto 1.0 decodes one patch at a time" in err
    assert not (tmp_path / "out").exists()
