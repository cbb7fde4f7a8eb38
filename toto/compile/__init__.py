"""Compile policy (:mod:`.policy`), the persistent compile cache (:mod:`.cache`) and the
compile-health counters (:mod:`.diagnostics`)."""

from .policy import (
    CPU_DEFAULT_MODE,
    CUDA_DEFAULT_MODE,
    ENV_COMPILE,
    ENV_COMPILE_MODE,
    MODES,
    CompiledFunction,
    CompileOptions,
    CompileSettings,
    default_compile_prefill,
    default_mode,
)

__all__ = [
    "CPU_DEFAULT_MODE",
    "CUDA_DEFAULT_MODE",
    "ENV_COMPILE",
    "ENV_COMPILE_MODE",
    "MODES",
    "CompileOptions",
    "CompileSettings",
    "CompiledFunction",
    "default_compile_prefill",
    "default_mode",
]
