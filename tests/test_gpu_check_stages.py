"""``scripts/gpu_check.sh --stage N``: the stage plumbing, with a stand-in for python (no GPU, no model)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")

# Logs every call; claims CUDA; each step prints a line, and the float32 benchmark then hangs.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in
    "-c "*) echo "torch 9.9, CUDA 12.0, available True" ;;
    *"toto.cli check"*) echo "TEST SUMMARY"; echo "All checks PASSED" ;;
    *"--dtype float32 --runners upstream-eager,ours-eager"*) echo "| S1 | ours-eager | float32 | row |"; sleep 30 ;;
    *) echo "ran: $*" ;;
esac
"""


def run_stage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    environment = {**os.environ, "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"), "OUT": str(tmp_path / "out")}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env={**environment, **env}
    )


def calls(tmp_path: Path) -> list[str]:
    return [line for line in (tmp_path / "calls").read_text().splitlines() if not line.startswith("-c ")]


@pytest.mark.parametrize(("args", "message"), [([], "--stage must be"), (["--stage", "6"], "got '6'")])
def test_a_stage_is_required(tmp_path, args, message):
    result = run_stage(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr and "usage: bash scripts/gpu_check.sh --stage 1|2|3|4|5|all" in result.stderr


def test_stage_1_streams_each_step_and_records_a_cut_one(tmp_path):
    result = run_stage(tmp_path, "--stage", "1", "--scenarios", "S2", LIMIT_BENCH="2")
    assert result.returncode == 1, result.stdout + result.stderr
    out = tmp_path / "out"
    summary = (out / "stage1.txt").read_text()
    assert "| 1 | check --quick | passed | exit 0 |" in summary
    assert "| 1 | bench float32 | TIMED OUT | exit 124 |" in summary
    log = (out / "stage1.log").read_text()
    assert "All checks PASSED" in log
    assert "| S1 | ours-eager | float32 | row |" in log  # what the cut step printed before its limit
    check, bench = calls(tmp_path)
    assert check == "-m toto.cli check --quick --device cuda"
    assert bench.startswith(f"scripts/bench.py --device cuda --repeats 3 --json {out}/bench_float32.json --dtype float32")
    assert bench.endswith("--scenarios S2")  # extra arguments come last, so they win
    assert "FAILED: stage 1: bench float32 (exit 124)" in result.stdout


def test_stages_2_and_3_run_their_steps_in_order(tmp_path):
    result = run_stage(tmp_path, "--stage", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    parity, bf16 = calls(tmp_path)
    assert parity.startswith("scripts/gpu_check.py --device cuda")
    assert "--dtype bfloat16 --runners upstream-eager,ours-eager,ours-compiled" in bf16
    (tmp_path / "calls").unlink()
    result = run_stage(tmp_path, "--stage", "3", "--repeats", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    s4, upstream, baseline = calls(tmp_path)
    # In the S4 runs the stage's own options come after the extra ones, so they stay.
    assert "--repeats 5 --repeats 2 --dtype bfloat16 --scenarios S4 --runners ours-compiled --s4-batch-size 256" in s4
    assert "--scenarios S1 --runners upstream-eager,upstream-compiled" in upstream and upstream.endswith("--repeats 5")
    assert "--scenarios S4 --runners upstream-eager --s4-batch-size 256" in baseline
    summary = (tmp_path / "out" / "stage3.txt").read_text()
    assert summary.count("| passed |") == 3


def test_without_cuda_the_stage_stops_at_once(tmp_path):
    fake_line = 'echo "torch 9.9, CUDA None, available False"'
    no_cuda = tmp_path / "no_cuda"
    no_cuda.write_text(f"#!/usr/bin/env bash\necho \"$*\" >> \"$CALLS\"\n{fake_line}\n")
    no_cuda.chmod(0o755)
    result = run_stage(tmp_path, "--stage", "1", PYTHON=str(no_cuda))
    assert result.returncode == 2
    assert "CUDA is not available" in result.stderr and "--dry" in result.stderr
    assert [line for line in (tmp_path / "calls").read_text().splitlines() if "scripts/" in line or "toto.cli" in line] == []


def test_stage_4_benchmarks_toto2_in_both_dtypes(tmp_path):
    result = run_stage(tmp_path, "--stage", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    float32, bfloat16 = calls(tmp_path)
    assert "--family toto2 --toto2-workloads T3 --dtype float32" in float32
    assert "--toto2-runners upstream-eager,upstream-compiled,ours-eager,ours-compiled" in float32
    assert "--family toto2 --toto2-workloads T3 --dtype bfloat16 --toto2-runners upstream-eager,ours-compiled" in bfloat16


def test_stage_5_benchmarks_streams(tmp_path):
    result = run_stage(tmp_path, "--stage", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    (streams,) = calls(tmp_path)
    assert "--streams --dtype float32 --stream-series 10000 --stream-batch 2500" in streams
