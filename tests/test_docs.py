"""The README and docs/: links resolve, the CI commands are the README's, examples run, paths are current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from toto._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]
# docs/ARCHITECTURE.md and docs/PERFORMANCE.md have their own maintainers; their links are checked, their wording not.
def test_readme_monitoring_example_runs(tiny_checkpoint):
    """The README's Monitoring example, after the Usage section's lines (pipeline and context)."""
    import numpy as np

    from toto import TotoPipeline

    section = (ROOT / "README.md").read_text().split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    blocks = _python_blocks(section)
    assert len(blocks) == 2
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)
    context = 50 + 10 * np.sin(2 * np.pi * np.arange(700) / 96)
    namespace: dict = {"pipeline": pipeline, "context": context, "new_points": context[:40] + 1.0}
    exec(compile(blocks[0], "README Monitoring #0", "exec"), namespace)
    assert namespace["density"].shape == (1, 700) and namespace["scores"].anomaly.shape == (1, 700)
    exec(compile(blocks[1], "README Monitoring #1", "exec"), namespace)
    assert namespace["scores"].nll.shape == (1, 1, 40) and namespace["forecast"].mean.shape == (1, 1, 64)
    assert namespace["held"].nll.shape == (1, 740)
    assert pipeline.stream_from_state(namespace["state"]).forecast(64).mean.equal(namespace["forecast"].mean)


OWN_DOCS = ["README.md", "docs/USAGE.md", "docs/COMMANDS.md", "docs/BACKTESTING.md", "docs/FINETUNING.md",
            "docs/TUNING.md", "docs/SCALING.md", "docs/ROBUSTNESS.md", "docs/COMPILE.md", "docs/MONITORING.md"]  # fmt: skip
MOVED_TABLE = "docs/USAGE.md"  # lists every old path next to its new one


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    headings = re.findall(r"^#+ (.*)$", _without_code(path.read_text()), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(path):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _without_code(path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{path.name}: {broken}"


def test_ci_runs_the_readme_commands():
    """.ci/run promises "the README's set-up, then the README's test command"."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh && toto-compiled check --quick" in readme
    assert "\npython -m pytest\n" in readme
    assert "bash scripts/setup.sh" in ci and "python -m pytest" in ci


@pytest.mark.parametrize("name", OWN_DOCS)
def test_docs_name_no_moved_module_path(name):
    """Old paths appear only in the table of moves, beside their new path."""
    stale = []
    for old, new in MOVED.items():
        dotted = re.compile(r"(?<![\w.])" + re.escape(old) + r"(?![\w])")
        slashed = re.compile(r"(?<![\w/])" + re.escape(old.replace(".", "/")) + r"\.py")
        for line in (ROOT / name).read_text().splitlines():
            in_table = name == MOVED_TABLE and line.startswith("|") and new in line
            if (dotted.search(line) or slashed.search(line)) and not in_table:
                stale.append(f"{old}: {line.strip()}")
    assert not stale, f"{name} names moved modules by their old path: {stale}"


def test_moved_table_lists_every_move():
    table = (ROOT / MOVED_TABLE).read_text()
    for old, new in MOVED.items():
        assert f"| `{old}` | `{new}`" in table


def test_readme_usage_examples_run(tiny_checkpoint, tmp_path, monkeypatch):
    """The README's Usage section, on the tiny checkpoint instead of the hub's."""
    section = (ROOT / "README.md").read_text().split("## Usage", 1)[1].split("\n## ", 1)[0]
    blocks = _python_blocks(section)
    assert len(blocks) == 2 and '"Datadog/Toto-Open-Base-1.0"' in blocks[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        code = code.replace('"Datadog/Toto-Open-Base-1.0"', repr(str(tiny_checkpoint)))
        exec(compile(code, f"README Usage #{i}", "exec"), namespace)
    assert namespace["forecasts"][0].samples.shape == (1, 1, 96, 256)
    assert namespace["quantiles"].shape == (1, 96, 3)
    frame = namespace["forecast"]
    assert len(frame) == 24 and {"item_id", "timestamp", "predictions", "mean", "0.1", "0.9"} <= set(frame.columns)


def test_readme_toto2_example_runs(tmp_path):
    """The README's Toto 2.0 example, on a tiny random Toto 2.0 checkpoint instead of the hub's."""
    from checkpoints import TINY_TOTO2_CONFIG, write_random_toto2

    section = (ROOT / "README.md").read_text().split("## Toto 2.0", 1)[1].split("\n## ", 1)[0]
    (code,) = _python_blocks(section)
    checkpoint = write_random_toto2(tmp_path / "toto2", TINY_TOTO2_CONFIG)
    assert '"Datadog/Toto-2.0-22m"' in code
    import numpy as np

    from toto import TotoPipeline

    # As after the Usage section's lines, which import TotoPipeline and make the context.
    namespace: dict = {"TotoPipeline": TotoPipeline, "context": 50 + 10 * np.sin(2 * np.pi * np.arange(700) / 96)}
    exec(compile(code.replace('"Datadog/Toto-2.0-22m"', repr(str(checkpoint))), "README Toto 2.0", "exec"), namespace)
    assert namespace["quantiles"].shape == (1, 96, 3) and namespace["median"].shape == (1, 96)


def test_license_is_the_apache_license_the_metadata_names():
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert re.search(r"^Copyright \d{4} the toto-compiled authors$", license_text, flags=re.MULTILINE)
    assert re.search(r'^license = "Apache-2.0"$', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)
