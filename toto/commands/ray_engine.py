"""The Ray engine's side of the commands (``--engine ray``): its options, joining the cluster,
and its errors as one line. ``forecast`` and ``backtest`` share it; Ray is imported only when
the engine is chosen."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import one_line
from ..frames.io import DataFileError, strip_frame_name
from .common import _finite, _positive_int
from .errors import UsageError

RAY_ONLY_OPTIONS = ("--ray-address", "--workers", "--gpus-per-worker")


def add_engine_arguments(parser: argparse.ArgumentParser, limits: str) -> None:
    """--engine and the options of the Ray engine (``limits``: what the Ray engine does not do)."""
    add = parser.add_argument
    add("--engine", choices=("local", "ray"), default="local",
        help="local: run in this process (default). ray: model workers on a Ray cluster (extra "
             f"toto-compiled[ray]) read the input themselves; {limits}; --device is ignored (the workers use "
             "CUDA when --gpus-per-worker is above 0); --compile/--no-compile, else TOTO_COMPILE as set here, "
             "applies to the workers")
    add("--ray-address", metavar="ADDRESS",
        help="--engine ray: 'auto' (the cluster this machine belongs to) or HOST:PORT (or ray://HOST:PORT) "
             "(default: start a Ray cluster on this machine)")
    add("--workers", type=_positive_int, metavar="N", help="--engine ray: model workers (Ray actors) (default: 1)")
    add("--gpus-per-worker", type=_gpus, metavar="G",
        help="--engine ray: GPUs each worker reserves; above 0 the workers load the model on CUDA, and the "
             "cluster must have the GPUs (default: 0, CPU)")


def _gpus(text: str) -> float:
    """A GPU share as Ray takes it: a fraction of one GPU, or a whole number of them."""
    value = _finite(text)
    if value is None or value < 0 or (value > 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"must be 0, a fraction of 1, or a whole number of GPUs, got {text!r}")
    return value


def check_engine(args: argparse.Namespace) -> None:
    """The Ray engine's options are an error with --engine local, rather than silently ignored."""
    if args.engine == "local":
        for option in RAY_ONLY_OPTIONS:
            if getattr(args, option[2:].replace("-", "_")) is not None:
                raise UsageError(f"{option} is for --engine ray")


def check_output_folder(path: Path, option: str) -> None:
    """A Ray output is a new folder (the job renames its staging folder onto it) in an existing folder."""
    if path.exists() or path.is_symlink():
        raise UsageError(f"{option} {path}: already exists; with --engine ray it names a new folder of Parquet files")
    if not path.absolute().parent.is_dir():
        raise UsageError(f"{option} {path}: its folder does not exist")
    if path.suffix.lower() == ".csv":
        raise UsageError(f"{option} {path}: with --engine ray the output is a folder of Parquet files, not CSV")


def connect_ray(args: argparse.Namespace) -> dict[str, Any]:
    """Join (or start) the Ray cluster; the worker options of :func:`toto.engines.ray.forecast_dataset`.

    A missing extra, a malformed address or one that does not answer is a UsageError (one line).
    """
    from ..compile.cache import ENV_COMPILE_CACHE
    from ..compile.policy import CompileSettings
    from ..engines.ray import connect, require_ray

    try:
        connect(args.ray_address)
    except (ImportError, ConnectionError, ValueError) as err:
        raise UsageError(one_line(err)) from None
    gpus = args.gpus_per_worker or 0.0
    available = require_ray().cluster_resources().get("GPU", 0.0)
    if gpus > available:  # Ray would wait for them forever
        where = f"at {args.ray_address}" if args.ray_address else "started on this machine"
        raise UsageError(f"--gpus-per-worker {gpus:g}: the Ray cluster {where} has {available:g} GPUs")
    workers = args.workers or 1
    # Resolved here, as the local engine resolves them: the workers may not share this process's environment.
    compile_on = CompileSettings.resolve(args.compile).enabled
    print(f"engine: ray ({args.ray_address or 'a cluster on this machine'}), {workers} worker{'s' * (workers != 1)}"
          f" on {'CUDA' if gpus else 'CPU'}, model {args.model} (compile: {'on' if compile_on else 'off'})",
          file=sys.stderr, flush=True)
    model = Path(args.model)
    return dict(
        # Workers do not run in this folder: local paths travel as absolute ones.
        model=str(model.absolute()) if model.exists() else args.model,
        concurrency=workers,
        num_gpus_per_worker=gpus,
        compile=compile_on,
        compile_cache_dir=os.environ.get(ENV_COMPILE_CACHE) or None,
    )


@contextmanager
def ray_errors(args: argparse.Namespace) -> Iterator[None]:
    """Errors of a Ray job as one line: a ValueError of the distributed functions or of a worker (which Ray
    wraps) names --input; a worker whose model would not load names --model. Anything else propagates."""
    try:
        yield
    except Exception as err:  # noqa: BLE001  re-raised unless recognised underneath Ray's wrappers
        from ray.exceptions import RayActorError  # imported already: the cluster was joined

        cause = worker_cause(err)
        if isinstance(cause, RayActorError) and cause.actor_init_failed:
            # An actor's __init__ loads the model; its error (type: message) ends Ray's text.
            raise UsageError(f"cannot load model {args.model!r} in a Ray worker: {one_line(cause, last=True)}") from None
        if not isinstance(cause, ValueError) or isinstance(cause, (UsageError, DataFileError)):
            raise
        # The cluster was given the absolute path; name the file as the user did.
        path = args.input
        message = strip_frame_name(one_line(cause)).replace(str(path.absolute()), str(path))
        raise DataFileError(message if str(path) in message else f"{path}: {message}") from None


def worker_cause(err: BaseException) -> BaseException:
    """The exception a Ray task or actor raised, out of Ray's wrappers (``RayTaskError.cause``,
    Ray Data's ``UserCodeException``); ``err`` itself when it is not a wrapper."""
    try:
        from ray.exceptions import RayTaskError
    except ImportError:
        return err
    for _ in range(10):  # wrappers nest; a bound guards against a cycle
        if isinstance(err, RayTaskError) and isinstance(err.cause, BaseException):
            err = err.cause
        elif type(err).__name__ == "UserCodeException" and err.__cause__ is not None:
            err = err.__cause__
        else:
            break
    return err


def write_ray_folder(dataset: Any, path: Path) -> None:
    """:func:`toto.engines.ray.write_parquet_folder` at ``path`` (absolute: the workers write it)."""
    from ..engines.ray import write_parquet_folder

    try:
        write_parquet_folder(dataset, path.absolute())
    except FileExistsError:
        raise DataFileError(f"cannot write {path}: it was created while the job ran") from None
    except OSError as err:  # here, or in a worker (wrapped)
        raise DataFileError(f"cannot write {path} ({one_line(worker_cause(err))})") from None
