"""The ``check`` and ``bench`` subcommands (``forecast`` has its own file): exit codes, tables, failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compile_backends import HEALTH

from toto.cli import main
from toto.commands import check
from toto.commands.check import QUICK, Row, same_bucket_shorter, speed_row, summary
from toto.inference.capacity import bucket_capacity

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "toto.cli", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def summary_rows(stdout: str) -> dict[str, list[str]]:
    """The TEST SUMMARY table's rows by check name: [eager, compiled, result]."""
    table = stdout.split("TEST SUMMARY", 1)[1]
    rows = {}
    for line in table.splitlines():
        cells = [c for c in line.split("  ") if c.strip()]
        if len(cells) >= 4 and cells[3].strip() in ("PASS", "FAIL", "info"):
            rows[cells[0].strip()] = [c.strip() for c in cells[1:4]]
    return rows


def assert_quick_rows_pass(stdout: str) -> None:
    assert "All checks PASSED" in stdout
    rows = summary_rows(stdout)
    assert rows["graph breaks"] == ["-", "0", "PASS"]
    assert rows["recompiles + new graphs (steady state)"] == ["-", "0", "PASS"]
    assert rows["compiled path active"] == ["-", "yes", "PASS"]
    assert float(rows["parameter difference (mean path, max rel.)"][1]) <= check.MEAN_PATH_BOUND
    assert int(rows["graphs compiled (warm-up)"][1]) == 2  # one per decode-step kind
    assert rows[f"later call, s (min of {QUICK.repeats}, interleaved)"][2] == "info"  # timing noise never fails on CPU


def test_check_quick_passes_on_tiny_checkpoint(tiny_checkpoint, monkeypatch, capsys):
    """``--model`` loads the folder's weights. The health backend: the rows count what dynamo
    does; the README's command below runs the same check through inductor."""
    monkeypatch.setenv("TOTO_COMPILE_BACKEND", HEALTH)
    assert main(["check", "--quick", "--model", str(tiny_checkpoint), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert_quick_rows_pass(out)
    assert "RANDOM" not in out  # real (if tiny) weights were loaded from --model


@pytest.mark.slow
def test_readme_main_command_check_quick():
    """The README's main job, exactly: the published architecture with random weights, through inductor."""
    result = run_cli("check", "--quick")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "RANDOM weights" in result.stdout
    assert_quick_rows_pass(result.stdout)


def test_check_fails_when_compilation_fails(tiny_checkpoint, broken_torch_compile, capsys):
    with pytest.warns(RuntimeWarning, match="simulated compiler failure"):
        code = main(["check", "--quick", "--model", str(tiny_checkpoint), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 1
    assert summary_rows(out)["compiled path active"][1:] == ["no", "FAIL"]
    assert "FAILED: compiled path active" in out and "All checks PASSED" not in out


def test_check_reports_a_missing_model_without_traceback(tmp_path, capsys):
    assert main(["check", "--quick", "--model", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot load model" in err and "nowhere" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_check_cuda_without_cuda(capsys):
    assert main(["check", "--quick", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_summary_lists_failures_and_passes():
    rows = [Row("graph breaks", "-", "0", "PASS"), Row("speed", "1.0", "2.0", "FAIL", "speed-up 0.5x"), Row("t", "1", "2", "info")]
    text = summary(rows, QUICK, "cpu", "default", "a model", 0)
    assert text.splitlines()[-1] == "FAILED: speed"
    assert "All checks PASSED" not in text
    assert summary([rows[0], rows[2]], QUICK, "cpu", "default", "a model", 0).splitlines()[-1] == "All checks PASSED"


def test_speed_is_reported_on_cpu_and_judged_on_cuda():
    slow_cpu = speed_row(1.0, 2.0, 5, "cpu")
    assert (slow_cpu.name, slow_cpu.verdict) == ("later call, s (min of 5, interleaved)", "info")
    assert slow_cpu.detail.startswith("speed-up 0.50x")
    assert speed_row(1.0, 2.0, 5, "cuda").verdict == "FAIL"
    assert speed_row(2.0, 1.0, 5, "cuda").verdict == "PASS"
    assert speed_row(1.0, 1.0, 5, "cuda").detail == "speed-up 1.00x, >= 1.0x"


@pytest.mark.parametrize(("length", "horizon", "patch"), [(512, 192, 64), (2048, 512, 64), (512, 192, 16), (100, 8, 16), (64, 8, 64)])
def test_shorter_context_stays_in_its_capacity_bucket(length, horizon, patch):
    shorter = same_bucket_shorter(torch.zeros(length), horizon, patch)
    steps = -(-horizon // patch) - 1

    def bucket(n):
        return bucket_capacity(-(-n // patch) + steps)

    assert bucket(shorter.shape[-1]) == bucket(length)
    if -(-length // patch) > 1 and length % patch == 0 and bucket(length - patch) == bucket(length):
        assert shorter.shape[-1] < length  # a shorter context was possible, so it was used


def test_bench_runs_ours_and_skips_upstream_without_oracle(tmp_path, capsys):
    code = main(["bench", "--scenarios", "S1", "--runners", "ours-eager,upstream-eager", "--repeats", "1",
                 "--oracle", str(tmp_path / "no-oracle"), "--json", str(tmp_path / "bench.json")])
    captured = capsys.readouterr()
    assert code == 0
    assert "upstream runners skipped" in captured.err
    assert "| S1 | ours-eager |" in captured.out and "upstream-eager |" not in captured.out
    assert (tmp_path / "bench.json").read_text().count('"ours-eager"') == 1


@pytest.mark.parametrize("args", [["--scenarios", "S9"], ["--runners", "ours-fast"]])
def test_bench_rejects_unknown_names(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *args])
    assert exit_info.value.code == 2
    assert "unknown" in capsys.readouterr().err
