"""The package's shape: a small root, small modules, and imports that point down the layers
(docs/ARCHITECTURE.md), read from the source with ``ast``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "toto"

# Bottom to top; a module may import its own layer or lower ones. docs/ARCHITECTURE.md draws them.
LAYERS = (
    ("toto._moved", "toto.arguments", "toto.config", "toto.data", "toto.errors"),
    ("toto.checkpoints",),
    ("toto.model", "toto.toto2"),
    ("toto.compile",),
    ("toto.inference",),
    ("toto.training",),
    ("toto.frames",),
    ("toto.families",),
    ("toto.pipeline",),
    ("toto.evaluation",),
    ("toto.engines",),
    ("toto.scripts",),
    ("toto.commands", "toto.cli"),
)
# The one import that runs back up (docs/ARCHITECTURE.md says why): ``python -m toto.training``
# under torchrun is the ``finetune`` command.
ALLOWED_UPWARD = {("toto.training.__main__", "toto.commands.finetune")}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer of LAYERS: place it")


def imports_of(module: str, path: Path) -> set[str]:
    """The package's modules that ``module`` imports, at any depth of its code (lazy imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(name if name in modules() else target for name in names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "toto" or name.startswith("toto.")}


def test_the_root_holds_at_most_six_modules():
    root = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root) <= 6, root


def test_no_module_is_over_600_lines():
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py") if (n := len(path.read_text().splitlines())) > 600}
    assert not long


def test_imports_point_down_the_layers():
    upward = set()
    for module, path in modules().items():
        if module == "toto":
            continue  # the package root re-exports the public API
        for target in imports_of(module, path):
            if target != "toto" and layer_of(target) > layer_of(module):
                upward.add((module, target))
    assert upward == ALLOWED_UPWARD


def test_no_import_circles():
    graph = {module: {t for t in imports_of(module, path) if t != "toto"} for module, path in modules().items()}
    for module in graph:  # its package's __init__ is imported first; a module importing its own package is fine
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".")}
    visiting, done = [], set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, f"import circle: {' -> '.join(visiting[visiting.index(node):] + [node])}"
        visiting.append(node)
        for target in graph.get(node, ()):
            visit(target)
        visiting.pop()
        done.add(node)

    for module in graph:
        visit(module)


@pytest.mark.parametrize(("old", "new", "name"), [
    ("toto.distributed", "toto.engines.ray", "forecast_dataset"),
    ("toto.random_checkpoint", "toto.checkpoints.random_weights", "write_checkpoint"),
    ("toto.plot", "toto.frames.plot", "plot_forecast"),
    ("toto.loading", "toto.checkpoints.reading", "read_checkpoint"),
    ("toto.finetuned", "toto.scripts.finetune_toto", "load_finetuned_toto"),
])  # fmt: skip
def test_moved_modules_still_import_with_a_deprecation_warning(old, new, name):
    code = (
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({new!r})\n"
        f"assert getattr(old, {name!r}) is getattr(new, {name!r})\n"
        "old.patched_here = 1\n"  # writes reach the new module, as monkeypatching an old path expects
        "assert new.patched_here == 1\n"
        "messages = [str(w.message) for w in caught if w.category is DeprecationWarning]\n"
        f"assert any({old!r} in m and {new!r} in m for m in messages), messages\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
