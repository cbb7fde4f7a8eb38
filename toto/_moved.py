"""Old import paths of modules that moved when the package was regrouped, kept working with a ``DeprecationWarning``.

``import toto.loading`` gives a module that forwards every attribute to
``toto.checkpoints.reading``; docs/ARCHITECTURE.md lists the moves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {
    "toto.loading": "toto.checkpoints.reading",
    "toto.saving": "toto.checkpoints.writing",
    "toto.finetuned": "toto.scripts.finetune_toto",  # its public name, load_finetuned_toto, lives there
    "toto.random_checkpoint": "toto.checkpoints.random_weights",
    "toto.compile_cache": "toto.compile.cache",
    "toto.diagnostics": "toto.compile.diagnostics",
    "toto.validation": "toto.arguments",
    "toto.progress": "toto.pipeline.progress",
    "toto.plot": "toto.frames.plot",
    "toto.distributed": "toto.engines.ray",
    "toto.inference.stepwise": "toto.inference.call_protocol",
    "toto.commands.frames_io": "toto.frames.io",
}


class _Forwarding(types.ModuleType):
    """Stands at the old path; reads (and writes, e.g. monkeypatching) go to the new module."""

    def __init__(self, name: str, target: types.ModuleType):
        super().__init__(name, f"moved to {target.__name__}")
        object.__setattr__(self, "_target", target)

    def __getattr__(self, attribute: str):
        return getattr(self._target, attribute)

    def __setattr__(self, attribute: str, value) -> None:
        if attribute.startswith("__"):
            object.__setattr__(self, attribute, value)  # the import system's own bookkeeping
        else:
            setattr(self._target, attribute, value)

    def __dir__(self) -> list[str]:
        return dir(self._target)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path will be removed", DeprecationWarning, stacklevel=2)
        return _Forwarding(spec.name, importlib.import_module(new))

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    """Append the finder once: real modules always win over an alias."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
