"""A compile cache that outlives the process (``TOTO_COMPILE_CACHE=<dir>`` or ``compile_cache_dir=``),
built on torch's cache artifacts plus inductor's on-disk cache. The artifacts file is
checked (header, size, checksum, torch version, CPU class) before torch sees it; any
problem warns once and compiling starts from scratch. File format and rationale:
docs/ARCHITECTURE.md, "Notes by module".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import secrets
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

ENV_COMPILE_CACHE = "TOTO_COMPILE_CACHE"
ENV_INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"
FILE_NAME = "compile-artifacts.bin"
FORMAT = "toto-compile-cache"
FORMAT_VERSION = 1

_LOCK = threading.Lock()
_LOADED: dict[Path, bool] = {}  # directory -> what its first load() returned
_warned_no_mega_cache = False


class _Unusable(Exception):
    """The cache file cannot be used; the message says why."""


@dataclass(frozen=True)
class CompileCache:
    directory: Path
    use_for_inductor: bool = True  # also keep inductor's on-disk cache (built kernels) in directory

    @classmethod
    def resolve(cls, directory: str | os.PathLike | None) -> "CompileCache | None":
        """The argument, else $TOTO_COMPILE_CACHE, else None (no persistent cache).

        An empty string, as argument or variable, also means no cache.
        """
        chosen = os.fspath(directory) if directory is not None else os.environ.get(ENV_COMPILE_CACHE, "")
        if not chosen.strip():
            return None
        # Absolute now, so a later chdir does not move the cache.
        return cls(Path(chosen).expanduser().resolve())

    @property
    def path(self) -> Path:
        return self.directory / FILE_NAME

    def load(self) -> bool:
        """Load saved artifacts into torch's caches, once per process per directory. True if loaded.

        Later calls for the directory return the first call's answer without reading the file.
        """
        with _LOCK:
            if self.directory not in _LOADED:
                if self.use_for_inductor:
                    self._point_inductor_here()
                _LOADED[self.directory] = self._load_file()
            return _LOADED[self.directory]

    def save(self) -> bool:
        """Write what this process has compiled so far (atomically: temp file + os.replace). True if written.

        False without a warning when torch recorded nothing (the old file stays); False with
        one RuntimeWarning when writing failed.
        """
        if not _has_mega_cache():
            return False
        with _LOCK:
            try:
                saved = torch.compiler.save_cache_artifacts()
            except Exception as err:  # noqa: BLE001 - a torch bug must not break forecasting
                self._warn(f"torch could not serialize its compile artifacts ({_describe(err)})")
                return False
            if saved is None:  # torch recorded nothing: keep whatever file is there
                return False
            payload = saved[0]
            try:
                _write_atomically(self.path, _header(payload) + payload)
            except OSError as err:
                self._warn(f"could not save ({_describe(err)}); the next process compiles from scratch")
                return False
            return True

    def _load_file(self) -> bool:
        if not _has_mega_cache():
            return False
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return False  # first run: nothing saved yet, not a problem
        except OSError as err:
            self._warn(f"could not read ({_describe(err)}); compiling from scratch")
            return False
        try:
            payload = _payload(data)
        except _Unusable as why:
            self._warn(f"{why}; not loaded, compiling from scratch")
            return False
        try:
            info = torch.compiler.load_cache_artifacts(payload)
        except Exception as err:  # noqa: BLE001 - whatever torch raises, a cold compile still works
            self._warn(f"torch failed to load it ({_describe(err)}); compiling from scratch")
            return False
        if info is None:
            self._warn("torch could not decode the artifacts; compiling from scratch")
            return False
        _keep_in_later_saves(payload)
        return True

    def _point_inductor_here(self) -> None:
        # Never override the user's choice, nor move the cache under graphs already compiled;
        # an unwritable directory is left to save() to report.
        if _inductor_dir_chosen() or _compiled_anything():
            return
        target = self.directory / "inductor"
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        if os.access(target, os.W_OK | os.X_OK):
            os.environ[ENV_INDUCTOR_CACHE] = str(target)

    def _warn(self, problem: str) -> None:
        # stacklevel=2: one call site per problem, so Python's once-per-location filter stops repeats.
        warnings.warn(f"compile cache {self.path}: {problem}", RuntimeWarning, stacklevel=2)


def _inductor_dir_chosen() -> bool:
    # Importing torch._dynamo already sets the variable to inductor's default, so "set" alone
    # does not mean the user chose it; being the default means they did not.
    chosen = os.environ.get(ENV_INDUCTOR_CACHE)
    if not chosen:
        return False
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return True
    return os.path.abspath(chosen) != os.path.abspath(default_cache_dir())


def _compiled_anything() -> bool:
    from .diagnostics import compiled_graph_count

    return compiled_graph_count() > 0


def _header(payload: bytes) -> bytes:
    fields = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "torch": torch.__version__,
        "machine": _machine(),
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return json.dumps(fields).encode() + b"\n"


def _payload(data: bytes) -> bytes:
    """The torch bytes inside a cache file, checked whole before torch sees any of them."""
    line, newline, payload = data.partition(b"\n")
    header = _parse_header(line) if newline else None
    if header is None:
        raise _Unusable("not a toto compile cache file (no valid header)")
    if header["torch"] != torch.__version__:
        raise _Unusable(f"saved by torch {header['torch']}, this is torch {torch.__version__} (stale)")
    if header["machine"] != _machine():
        raise _Unusable(f"saved on a {header['machine']} machine, this is {_machine()} (stale)")
    if len(payload) != header["size"]:
        raise _Unusable(f"truncated or padded: expected {header['size']} bytes of artifacts, found {len(payload)}")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise _Unusable("checksum mismatch (corrupt)")
    return payload


def _parse_header(line: bytes) -> dict[str, Any] | None:
    try:
        header = json.loads(line)
    except ValueError:  # includes bad UTF-8
        return None
    expected = {"format": str, "version": int, "torch": str, "machine": str, "size": int, "sha256": str}
    if not isinstance(header, dict) or any(not isinstance(header.get(k), t) for k, t in expected.items()):
        return None
    if header["format"] != FORMAT or header["version"] != FORMAT_VERSION:
        return None
    return header


def _machine() -> str:
    # Inductor's FX-graph key (torch 2.13) covers the GPU but not the CPU's vector ISA, and its C++
    # kernels are generated for that ISA: a file from another CPU class is treated as stale.
    return f"{platform.machine()}/{torch.backends.cpu.get_cpu_capability()}"


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its 0600 mode would make a shared cache directory private; "x" honours the umask.
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "xb") as file:
            _write_all(file, data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's error is the one worth reporting
            temp.unlink(missing_ok=True)
        raise


def _write_all(file: BinaryIO, data: bytes) -> None:
    # A seam of its own so tests can fill the disk.
    file.write(data)


def _keep_in_later_saves(payload: bytes) -> None:
    """Re-record loaded artifacts so a later save still holds them.

    save_cache_artifacts() returns only what this process compiled or hit in the
    cache; without this, a run that used part of the file would overwrite it with
    that part. It touches torch's private record, so it is best effort: if torch
    changes, the cost is only a smaller file.
    """
    try:
        from torch.compiler._cache import CacheArtifactManager as manager

        for kind, artifacts in (manager.deserialize(payload) or {}).items():
            for artifact in artifacts:
                if artifact not in manager._seen_artifacts:  # same test record_artifact() makes
                    manager._seen_artifacts.add(artifact)
                    manager._new_cache_artifacts[kind].append(artifact)
    except Exception:  # noqa: BLE001 - see docstring
        pass


def _has_mega_cache() -> bool:
    global _warned_no_mega_cache
    if hasattr(torch.compiler, "save_cache_artifacts"):
        return True
    if not _warned_no_mega_cache:
        _warned_no_mega_cache = True
        warnings.warn(
            f"torch {torch.__version__} has no torch.compiler.save_cache_artifacts: "
            "the compile cache keeps only inductor's on-disk cache",
            RuntimeWarning,
            stacklevel=2,
        )
    return False


def _describe(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]
