"""``toto-compiled bench --family toto2``: the Toto 2.0 workloads, interleaved, in a table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toto.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_toto2_bench_reports_each_runner(tmp_path, capsys):
    out = tmp_path / "toto2.json"
    code = main([
        "bench", "--device", "cpu", "--family", "toto2", "--toto2-workloads", "T1",
        "--toto2-runners", "upstream-eager,ours-eager", "--repeats", "1", "--oracle", str(ROOT / ".oracle"),
        "--json", str(out),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    report = json.loads(out.read_text())
    rows = report["results"]["T1"]
    upstream = "upstream-eager" in rows  # absent when the oracle is not installed
    assert set(rows) == {"ours-eager"} | ({"upstream-eager"} if upstream else set())
    ours = rows["ours-eager"]
    assert ours["series_per_s"] == pytest.approx(8 / ours["best_s"])
    if upstream:
        assert ours["speed_up"] == pytest.approx(rows["upstream-eager"]["best_s"] / ours["best_s"])
    assert "| T1 | ours-eager |" in captured.out and "7.3M config" in captured.out
