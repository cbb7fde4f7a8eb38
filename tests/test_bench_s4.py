"""``toto-compiled bench --scenarios S4``: many series per call, at a tiny scale (tiny model, a few series)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoints import TINY_CONFIG
from compile_backends import HEALTH
from toto.cli import main
from toto.commands.bench.report import s4_speed_ups, table
from toto.commands.bench.s4 import autogluon_batches, s4_workload, series_per_second
from toto.commands.bench.settings import S4Settings
from toto.data.util.dataset import MaskedTimeseries

ROOT = Path(__file__).resolve().parent.parent


def test_workload_is_deterministic_within_range_and_nested():
    settings = S4Settings()
    workload = s4_workload(settings)
    lengths = [len(s) for s in workload]
    assert len(workload) == 256
    assert min(lengths) >= 300 and max(lengths) <= 3000
    assert len(set(lengths)) > 200  # drawn, not one length repeated
    assert all(s.dtype == np.float32 and np.isfinite(s).all() for s in workload)
    again = s4_workload(S4Settings())
    assert all(np.array_equal(a, b) for a, b in zip(workload, again))
    # A scaled-down run forecasts the first series of the full workload, not other ones.
    smaller = s4_workload(S4Settings(series=32))
    assert all(np.array_equal(a, b) for a, b in zip(smaller, workload[:32]))
    # Levels differ across series (a seasonal sine around a level, plus noise).
    levels = [float(np.mean(s)) for s in workload]
    assert max(levels) / min(levels) > 10


def test_max_context_below_the_minimum_gives_that_length():
    assert S4Settings(series=5, max_context=100).lengths().tolist() == [100] * 5
    assert set(S4Settings(series=50, max_context=400).lengths()) <= set(range(300, 401))


def test_autogluon_batches_pad_left_to_each_batchs_longest_and_mask():
    series = [np.arange(1, 4, dtype=np.float32), np.arange(1, 6, dtype=np.float32), np.array([7.0, np.nan], np.float32)]
    batches = list(autogluon_batches(series, 2, MaskedTimeseries, "cpu", interval_seconds=3600))
    assert [tuple(b.series.shape) for b in batches] == [(2, 1, 5), (1, 1, 2)]  # in order, not sorted
    first = batches[0]
    assert first.series[0, 0].tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]  # NaN padding, then set to 0
    assert first.padding_mask[0, 0].tolist() == [False, False, True, True, True]
    assert first.padding_mask[1].all() and first.series[1, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert first.id_mask.shape == (2, 1, 5) and first.id_mask[:, 0, 0].tolist() == [0, 1]
    assert first.id_mask.dtype == torch.int32 and (first.id_mask == first.id_mask[..., :1]).all()
    assert first.timestamp_seconds.dtype == torch.int32 and not first.timestamp_seconds.any()
    assert first.time_interval_seconds.tolist() == [[3600], [3600]]
    # A missing value inside a series is treated like padding, as AutoGluon does.
    last = batches[1]
    assert last.series[0, 0].tolist() == [7.0, 0.0] and last.padding_mask[0, 0].tolist() == [True, False]


def test_series_per_second_and_speed_ups():
    assert series_per_second(256, 2.0) == 128.0
    assert series_per_second(1, 0.0) == math.inf
    results = {
        "upstream-eager": {"later_s": 100.0},
        "ours-eager": {"later_s": 2.0},
        "ours-compiled": {"later_s": 1.25},
        "ours-compiled-prefill": {"error": "timed out after 5 s"},
    }
    assert s4_speed_ups(results) == {"ours-eager": 50.0, "ours-compiled": 80.0}
    assert s4_speed_ups({"ours-compiled": {"later_s": 1.0}}) == {}  # no baseline, no ratio


def s4_result(later_s: float, series: int, batch_size: int, **extra) -> dict:
    return {
        "dtype": "float32", "batch_size": batch_size, "samples_per_batch": 32, "warmup": "full call",
        "warmup_s": 3.0, "times_s": [later_s], "later_s": later_s, "series_per_s": series / later_s,
        "peak_mib": 1000.0, "process_max_rss_mib": 1100.0, "graphs": 1, "graphs_after_warmup": 0,
        "graph_breaks": 0, "recompiles": 0, "cudagraph_skips": 0, **extra,
    }  # fmt: skip


def fake_report(results: dict, s4: S4Settings | None) -> dict:
    report = {
        "device": "a CPU", "compile_mode": "default", "torch": "2.x", "device_type": "cpu", "dtype": "float32",
        "default_compile_prefill": False, "stopped": None, "results": results,
    }  # fmt: skip
    if s4 is not None:
        report["s4"] = {
            "settings": dataclasses.asdict(s4),
            "workload": s4.describe(),
            "skipped_runners": [],
            "speed_up": s4_speed_ups(results.get("S4", {})),
        }
    return report


def test_table_shows_s4_series_per_second_and_the_ratio():
    s4 = S4Settings(series=64)
    results = {"S4": {"upstream-eager": s4_result(160.0, 64, 16), "ours-compiled": s4_result(2.0, 64, 16)}}
    report = fake_report(results, s4)
    report["s4"]["memory"] = {
        "device": "cpu",
        "runs": [
            {"series": 64, "peak_mib": 2000.0, "process_max_rss_mib": 2500.0},
            {"series": 128, "peak_mib": 2010.0, "process_max_rss_mib": 2500.0},
        ],
        "peak_ratio": 1.005,
        "process_rss_ratio": 1.0,
    }
    text = table(report)
    assert "| scenario | runner | dtype | first call s |" not in text  # S1-S3's table only when they ran
    assert "S4 workload: 64 univariate series" in text
    assert "| S4 | ours-compiled | float32 | 16 | 32 | 3.00 | 2.000 | 32.00 | 1000 | 80.0x | 1 | 0 |" in text
    assert "| S4 | upstream-eager | float32 | 16 | 32 | 3.00 | 160.000 | 0.40 | 1000 | 1.0x |" in text
    assert "S4 ours-compiled / upstream-eager: 80.0x (32.00 against 0.400 series/s)" in text
    assert "64 series: 2000 MiB" in text and "128 series: 2010 MiB" in text and "ratio 1.005" in text


def test_table_without_s4_is_unchanged():
    row = {
        "dtype": "float32", "first_s": 1.0, "later_s": 0.5, "compile_s": 0.5, "peak_mib": 100.0,
        "graphs": 0, "graph_breaks": 0, "recompiles": 0, "cudagraph_skips": 0,
    }  # fmt: skip
    text = table(fake_report({"S1": {"ours-eager": row}}, None))
    assert text.splitlines()[3:] == [
        "| scenario | runner | dtype | first call s | later call s | compile s | peak MiB | speed-up | graphs | "
        "graph breaks | recompiles | cudagraph skips |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        "| S1 | ours-eager | float32 | 1.00 | 0.500 | 0.5 | 100 | n/a | 0 | 0 | 0 | 0 |",
    ]
    assert "S4" not in text


def test_table_with_s1_and_s4_shows_both():
    row = {
        "dtype": "float32", "first_s": 1.0, "later_s": 0.5, "compile_s": 0.5, "peak_mib": 100.0,
        "graphs": 0, "graph_breaks": 0, "recompiles": 0, "cudagraph_skips": 0,
    }  # fmt: skip
    failed = {"dtype": "float32", "batch_size": 16, "samples_per_batch": 128, "error": "timed out after 9 s"}
    text = table(fake_report({"S1": {"ours-eager": row}, "S4": {"ours-compiled": failed}}, S4Settings()))
    assert "| S1 | ours-eager |" in text
    assert "| S4 | ours-compiled | float32 | 16 | 128 | failed: timed out after 9 s |" in text
    assert "ours-compiled / upstream-eager" not in text  # no baseline measured


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenarios", "S1", "--s4-memory"], "add S4 to --scenarios"),
        (["--scenarios", "S4", "--s4-series", "0"], "--s4-series must be at least 1"),
        (["--scenarios", "S4", "--s4-batch-size", "0"], "--s4-batch-size must be at least 1"),
    ],
)
def test_s4_usage_errors(args, message, capsys):
    assert main(["bench", "--device", "cpu", *args]) == 2
    assert message in capsys.readouterr().err


def test_s4_runs_end_to_end_at_tiny_scale(tmp_path, capsys, monkeypatch):
    """Tiny model, 4 short series: every S4 runner, the JSON report, and the memory check's two child processes.

    Compiled on the health backend (``TOTO_COMPILE_BACKEND``, which the children inherit): the
    plumbing is the point here, not inductor's kernels."""
    monkeypatch.setenv("TOTO_COMPILE_BACKEND", HEALTH)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CONFIG))
    out = tmp_path / "s4.json"
    code = main([
        "bench", "--device", "cpu", "--scenarios", "S4", "--runners", "upstream-eager,ours-eager,ours-compiled",
        "--config", str(config), "--s4-series", "4", "--s4-max-context", "100", "--s4-batch-size", "3",
        "--repeats", "1", "--s4-memory", "--oracle", str(ROOT / ".oracle"), "--json", str(out),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]["S4"]
    upstream = "upstream-eager" in results  # absent when the oracle is not installed
    assert set(results) == {"ours-eager", "ours-compiled"} | ({"upstream-eager"} if upstream else set())
    for name, result in results.items():
        assert "error" not in result, (name, result)
        assert result["series_per_s"] == pytest.approx(4 / result["later_s"])
        assert len(result["times_s"]) == 1
    ours = results["ours-compiled"]
    assert (ours["batch_size"], ours["samples_per_batch"], ours["warmup"]) == (3, 128, "full call")
    assert ours["graphs"] >= 1 and ours["graphs_after_warmup"] == 0  # the warm-up covered the last, smaller batch
    assert report["s4"]["settings"]["series"] == 4
    assert "4 univariate series" in captured.out and "| S4 | ours-compiled | float32 | 3 | 128 |" in captured.out
    if upstream:
        assert results["upstream-eager"]["warmup"] == "first 4 series"
        assert report["s4"]["speed_up"]["ours-compiled"] == pytest.approx(
            results["upstream-eager"]["later_s"] / ours["later_s"]
        )
        assert "S4 ours-compiled / upstream-eager:" in captured.out
    memory = report["s4"]["memory"]
    assert [run["series"] for run in memory["runs"]] == [4, 8]
    assert all(run["peak_mib"] > 0 for run in memory["runs"])
    assert memory["peak_ratio"] == pytest.approx(memory["runs"][1]["peak_mib"] / memory["runs"][0]["peak_mib"])
    assert "S4 memory, ours-compiled, a fresh process each" in captured.out
