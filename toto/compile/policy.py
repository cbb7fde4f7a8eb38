"""Compile policy: what gets compiled (the decode steps; with ``compile_prefill`` also the
prefill and first-patch draw, padded to their capacity bucket), with which settings
(arguments, else ``TOTO_COMPILE`` / ``TOTO_COMPILE_MODE`` / ``TOTO_COMPILE_BACKEND``, else
the device's default), and
the fallback to eager when compiling fails. The model code has no compile-specific branches.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator

import torch

ENV_COMPILE = "TOTO_COMPILE"
ENV_COMPILE_MODE = "TOTO_COMPILE_MODE"
ENV_COMPILE_BACKEND = "TOTO_COMPILE_BACKEND"
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# On CPU there are no CUDA graphs to replay; plain inductor measured fastest (docs/PERFORMANCE.md).
CPU_DEFAULT_MODE = "default"
CUDA_DEFAULT_MODE = "reduce-overhead"


@dataclass(frozen=True)
class CompileSettings:
    enabled: bool = False
    mode: str = CPU_DEFAULT_MODE
    backend: str = "inductor"
    # Prefill and the per-call glue; the default depends on the device (see the module docstring).
    compile_prefill: bool = False

    def for_prefill(self) -> "CompileSettings":
        return replace(self, enabled=self.enabled and self.compile_prefill)

    @classmethod
    def resolve(
        cls,
        torch_compile: bool | None = None,
        compile_mode: str | None = None,
        compile_backend: str | None = None,
        device: torch.device | str = "cpu",
        compile_prefill: bool | None = None,
    ) -> "CompileSettings":
        """Arguments win; ``None`` means "read the environment, else the device's default"."""
        enabled = _env_flag(ENV_COMPILE) if torch_compile is None else bool(torch_compile)
        mode = compile_mode or os.environ.get(ENV_COMPILE_MODE) or default_mode(device)
        if mode not in MODES:
            source = "compile_mode" if compile_mode else ENV_COMPILE_MODE
            raise ValueError(f"{source}: unknown mode {mode!r}; expected one of {MODES}")
        if compile_prefill is None:
            compile_prefill = default_compile_prefill(device)
        backend = compile_backend or os.environ.get(ENV_COMPILE_BACKEND) or "inductor"
        return cls(enabled=enabled, mode=mode, backend=backend, compile_prefill=bool(compile_prefill))


@dataclass(frozen=True)
class CompileOptions:
    """The five compile keywords of the public entry points, as asked (``None``: the environment,
    else the device's default); :meth:`resolve` turns them into :class:`CompileSettings`."""

    torch_compile: bool | None = None
    compile_mode: str | None = None
    compile_backend: str | None = None
    compile_prefill: bool | None = None
    compile_cache_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.compile_mode is not None and self.compile_mode not in MODES:
            raise ValueError(f"compile_mode: unknown mode {self.compile_mode!r}; expected one of {MODES}")

    def resolve(self, device: torch.device | str) -> CompileSettings:
        return CompileSettings.resolve(
            self.torch_compile, self.compile_mode, self.compile_backend, device, self.compile_prefill
        )

    def keywords(self) -> dict[str, Any]:
        """As keyword arguments of :class:`~toto.inference.forecaster.TotoForecaster` and ``TotoPipeline``."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


def default_mode(device: torch.device | str) -> str:
    return CUDA_DEFAULT_MODE if torch.device(device).type == "cuda" else CPU_DEFAULT_MODE


def default_compile_prefill(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


class CompiledFunction:
    """``fn`` under ``torch.compile(fullgraph=True)``, falling back to eager once if compiling fails.

    A failure warns once and is kept in :attr:`error`; from then on the eager
    function runs. An error that eager execution raises too is the caller's.

    Past dynamo's ``recompile_limit`` (distinct shapes of one function), dynamo would
    quietly run new shapes eagerly. Here that is an error, caught: the new shape runs
    eagerly with a warning (once) and :attr:`error` says so, while the shapes already
    compiled keep their graphs. Under ``torch.compiler.set_stance("fail_on_recompile")``
    a recompile raises, as the caller asked, instead of falling back.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        settings: CompileSettings,
        dynamic: bool | None = None,
        failures: set[str] | None = None,
    ):
        """``failures``: shared by functions that fail together (one forecaster's), so one
        compiler failure warns once, not once per function."""
        self.fn = fn
        self.settings = settings
        self.error: str | None = None
        self._failures = set() if failures is None else failures
        self._compiled = None
        if settings.enabled:
            options = {} if settings.backend != "inductor" else {"mode": settings.mode}
            self._compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic, backend=settings.backend, **options)

    @property
    def _name(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))

    @property
    def active(self) -> bool:
        """True while calls go through the compiled function."""
        return self._compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self._call_compiled(*args, **kwargs)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            if self.error is None:
                limit = torch._dynamo.config.recompile_limit
                self.error = (
                    f"more than torch._dynamo.config.recompile_limit ({limit}) distinct shapes; "
                    "new shapes run eagerly (raise the limit if a run needs more)"
                )
                warnings.warn(f"torch.compile of {self._name}: {self.error}", RuntimeWarning, stacklevel=2)
            return self.fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure
            if _stance() == "fail_on_recompile":
                raise  # the caller asked for recompiles to be errors: not ours to swallow
            result = self.fn(*args, **kwargs)  # an error eager raises too is the caller's, not the compiler's
            self._compiled = None
            self.error = " ".join(f"{type(err).__name__}: {err}".split())[:500]
            if not self._failures:
                warnings.warn(
                    f"torch.compile of {self._name} failed ({self.error}); running eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self._failures.add(self._name)
            return result


    def _call_compiled(self, *args: Any, **kwargs: Any) -> Any:
        # One seam for everything that runs inside compiled code (diagnostics.count_eager_ops wraps it).
        with _recompile_limit_is_an_error():
            return self._compiled(*args, **kwargs)


def _stance() -> str | None:
    """The active ``torch.compiler.set_stance`` name (torch has no public getter)."""
    stance = getattr(torch._dynamo.eval_frame, "_stance", None)
    return getattr(stance, "stance", None)


@contextmanager
def _recompile_limit_is_an_error() -> Iterator[None]:
    # Set and restored by hand: config.patch costs about 4x more, on every decode step.
    config = torch._dynamo.config
    previous = config.fail_on_recompile_limit_hit
    config.fail_on_recompile_limit_hit = True
    try:
        yield
    finally:
        config.fail_on_recompile_limit_hit = previous


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"environment variable {name}={value!r}: expected 1/0, true/false, yes/no or on/off")
