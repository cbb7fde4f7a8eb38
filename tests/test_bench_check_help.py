"""``check`` and ``bench``: plain-text ``--help``, and modules that import no torch until they run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from toto.cli import main


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["check", "bench"])
def test_help_is_plain_text(command, capsys):
    text = help_text(command, capsys)
    assert "--device" in text
    for markup in ("``", ":func:", ":mod:", ":class:", ":data:"):
        assert markup not in text, markup


def test_every_check_option_has_help(capsys):
    text = help_text("check", capsys)
    assert "--seed SEED           seeds the synthetic series and the sampled calls" in text
    assert "TEST SUMMARY" in text


def test_bench_help_lists_the_scenarios(capsys):
    text = help_text("bench", capsys)
    assert "S4  throughput over many series" in text and "--s4-memory" in text


def test_check_and_bench_import_neither_torch_nor_numpy():
    code = (
        "import sys, toto.commands.bench, toto.commands.check; "
        "heavy = [m for m in ('torch', 'numpy', 'toto.commands.bench.runners', 'toto.compile.health') "
        "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bench_names_of_the_single_module_still_import():
    from toto.commands import bench
    from toto.commands.bench.s4 import s4_workload

    assert bench.s4_workload is s4_workload and bench.S4Settings().series == 256
    with pytest.raises(AttributeError, match="no_such_name"):
        bench.no_such_name  # noqa: B018
