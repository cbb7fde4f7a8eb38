"""Forecasts and backtests over a Ray cluster (extra ``toto-compiled[ray]``, imported on first use).

The driver plans items into the local engine's batches (longest first, ties by stream key);
Ray Data gathers each batch on one model actor, which loads the checkpoint and compiles once.
Restarted actors retry their batch, so every item comes out exactly once; with ``seed`` the
output does not depend on how items are spread (docs/ARCHITECTURE.md, "Notes by module").
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..frames.options import DEFAULT_FRAME_BATCH_SIZE, DEFAULT_FRAME_SAMPLES, DEFAULT_QUANTILES, FrameOptions
from ..frames.panel import numpy_backed, quantile_column, require_pandas
from ..pipeline import TotoPipeline
from ..pipeline.batching import item_keys
from ..arguments import check_int
from ..errors import one_line

__all__ = ["WorkerOptions", "backtest_dataset", "connect", "forecast_dataset", "read_dataset", "write_parquet_folder"]

RAY_EXTRA = 'pip install "toto-compiled[ray]"'
BATCH_COLUMN = "__toto_batch"
SEASON_COLUMN = "__toto_season"


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or an ``ImportError`` naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise ImportError(f"the Ray engine needs ray[data]: {RAY_EXTRA}") from err
    return ray


def connect(address: str | None = None, **init_kwargs: Any) -> None:
    """Join the Ray cluster at ``address`` (``"auto"``: the one this machine is part of), or start
    a local one (``None``). An address that does not answer is a ``ConnectionError`` naming it,
    within seconds (``ray.init`` itself retries for minutes)."""
    ray = require_ray()
    remote = address not in (None, "auto", "local")
    host, port = _host_and_port(address) if remote else (None, None)
    if ray.is_initialized():
        return
    if remote:
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as err:
            raise ConnectionError(f"cannot reach a Ray cluster at {address!r}: {err.strerror or err}") from None
    try:
        ray.init(address=address, include_dashboard=False, **init_kwargs)
    except ConnectionError as err:
        raise ConnectionError(f"cannot reach a Ray cluster at {address!r}: {str(err).splitlines()[0]}") from None


def _host_and_port(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} must be 'auto', or HOST:PORT (optionally ray://HOST:PORT)")
    return host.strip("[]"), int(port)


def read_dataset(source: Any, columns: Sequence[str]) -> Any:
    """``source`` (a Ray Dataset, or a path to a Parquet file or folder or a CSV file) as a Ray
    Dataset, checked to hold ``columns``. Unreadable files and missing columns are a
    ``ValueError`` naming the file and column, before any model worker starts."""
    ray = require_ray()
    name = "dataset"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise ValueError(f"input {name} does not exist")
        csv = path.is_file() and path.suffix.lower() == ".csv"
        try:
            dataset = ray.data.read_csv(str(path)) if csv else ray.data.read_parquet(str(path))
            schema = dataset.schema()
        except Exception as err:  # pyarrow and Ray raise many kinds; all mean the same to the user
            raise ValueError(f"cannot read {name}: {one_line(err)}") from None
    else:
        dataset = source
        schema = dataset.schema()
    if schema is None:
        raise ValueError(f"{name} holds no rows")
    present = list(schema.names)
    for column in columns:
        if column not in present:
            raise ValueError(f"{name}: missing column {column!r} (columns: {', '.join(present)})")
    return dataset


def forecast_dataset(
    dataset: Any,
    *,
    model: str | os.PathLike,
    prediction_length: int,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    target: str | Sequence[str] = "target",
    quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
    num_samples: int = DEFAULT_FRAME_SAMPLES,
    samples_per_batch: int | None = None,
    batch_size: int = DEFAULT_FRAME_BATCH_SIZE,
    seed: int | None = 0,
    concurrency: int = 1,
    num_cpus_per_worker: float | None = None,
    num_gpus_per_worker: float = 0,
    compile: bool = True,
    compile_cache_dir: str | os.PathLike | None = None,
    torch_dtype: str | None = None,
    decode_block_size: int | None = None,
    _worker_hook: Callable[[], None] | None = None,
) -> Any:
    """Forecast every item of a long Ray Dataset (or Parquet/CSV path) on ``concurrency`` model actors.

    Returns a Ray Dataset in :meth:`TotoPipeline.predict_df`'s output schema (rows in no
    particular order across items). ``model``: a folder every worker can read, or a hub id.
    ``num_gpus_per_worker`` > 0 puts each actor on a GPU; ``torch_dtype`` (``"bfloat16"``)
    loads the weights in that dtype. ``decode_block_size``: Toto 2.0's steps per decoded block
    (0: the whole horizon in one block; None keeps the model's default, 768), checked against
    ``config.json`` before any worker starts. ``seed=None`` draws from torch's generator, so a retried
    batch draws again; a quantile model (Toto 2.0) draws nothing and takes the default seed
    and sample counts only. ``_worker_hook`` is called by each actor before each batch (tests
    use it to kill one).
    """
    frame = FrameOptions(
        prediction_length, id_column, timestamp_column, target, quantile_levels, num_samples, samples_per_batch,
        batch_size, seed,
    )  # fmt: skip
    workers = WorkerOptions(str(model), concurrency, num_cpus_per_worker, num_gpus_per_worker, compile,
                            _str_or_none(compile_cache_dir), torch_dtype, decode_block_size, _worker_hook)  # fmt: skip
    job = _Job.prepare(dataset, frame, workers)
    return job.run(_ForecastActor, {"frame": frame})


def backtest_dataset(
    dataset: Any,
    *,
    model: str | os.PathLike,
    prediction_length: int,
    windows: int = 1,
    stride: int | None = None,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    target: str | Sequence[str] = "target",
    quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
    interval: tuple[float, float] = (0.1, 0.9),
    seasonality: int | None = None,
    num_samples: int = DEFAULT_FRAME_SAMPLES,
    samples_per_batch: int | None = None,
    batch_size: int = DEFAULT_FRAME_BATCH_SIZE,
    seed: int | None = 0,
    concurrency: int = 1,
    num_cpus_per_worker: float | None = None,
    num_gpus_per_worker: float = 0,
    compile: bool = True,
    compile_cache_dir: str | os.PathLike | None = None,
    torch_dtype: str | None = None,
    decode_block_size: int | None = None,
    _worker_hook: Callable[[], None] | None = None,
) -> Any:
    """:func:`toto.evaluation.backtest` over a Ray cluster: a :class:`~toto.evaluation.backtest.BacktestResult`
    whose ``forecasts`` is a Ray Dataset (long, one row per item, window, target and step)
    and whose metrics are computed on the driver from each row's totals, with the same code
    as the local backtest, so they equal it (up to the rounding of batched arithmetic and
    of summation order). Options as :func:`forecast_dataset` and :func:`~toto.evaluation.backtest`.
    """
    from ..evaluation.backtest import BacktestOptions, BacktestParts, finish_backtest

    frame = FrameOptions(
        prediction_length, id_column, timestamp_column, target, quantile_levels, num_samples, samples_per_batch,
        batch_size, seed,
    )  # fmt: skip
    options = BacktestOptions(windows, stride, interval, seasonality)
    interval_levels = options.interval_levels(frame.quantile_levels)
    workers = WorkerOptions(str(model), concurrency, num_cpus_per_worker, num_gpus_per_worker, compile,
                            _str_or_none(compile_cache_dir), torch_dtype, decode_block_size, _worker_hook)  # fmt: skip
    job = _Job.prepare(dataset, frame, workers)
    nested = job.run(_BacktestActor, {"frame": frame, "options": options}).materialize()
    levels = list(frame.quantile_levels)
    horizon_columns = _horizon_columns(timestamp_column, levels)
    totals = _numpy_backed(nested.drop_columns(horizon_columns).to_pandas())
    seasons = totals.drop_duplicates(id_column).set_index(id_column)[SEASON_COLUMN]
    totals = totals.drop(columns=SEASON_COLUMN)
    keys = [id_column, "window", "cutoff", "target_name"]
    forecasts = nested.map_batches(
        _unnested, fn_kwargs={"keys": keys, "horizon_columns": horizon_columns}, batch_format="pandas"
    )
    parts = BacktestParts(forecasts, totals, {k: int(v) for k, v in seasons.items()}, levels, interval_levels)
    return finish_backtest(parts, id_column)


def write_parquet_folder(dataset: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``dataset`` as a folder of Parquet files at ``path``, atomically: into a hidden
    folder beside it, renamed into place once every file is written. A failed job leaves
    nothing at ``path``. ``path`` must be on storage every worker writes to (a local cluster's
    disk, or a shared file system)."""
    path = Path(path)
    if path.exists() and not (overwrite and path.is_dir()):
        raise FileExistsError(f"output {path} exists" + ("" if overwrite else "; pass overwrite=True to replace it"))
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        dataset.write_parquet(str(staging))
        staging.mkdir(exist_ok=True)  # an empty dataset writes no file, but its folder is still the output
        if path.exists():
            retired = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
            path.rename(retired)
            staging.rename(path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


# Planning ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerOptions:
    """Where and how the model actors run: ``model`` (a folder every worker reads, or a hub id),
    their number, CPUs and GPUs each, compilation, the shared compile cache, the weights' dtype."""

    model: str
    concurrency: int = 1
    num_cpus_per_worker: float | None = None
    num_gpus_per_worker: float = 0
    compile: bool = True
    compile_cache_dir: str | None = None
    torch_dtype: str | None = None
    decode_block_size: int | None = None  # None: the model's default
    hook: Callable[[], None] | None = None  # called by each actor before each batch (tests)

    def __post_init__(self) -> None:
        check_int("concurrency", self.concurrency)
        if not self.num_gpus_per_worker >= 0:
            raise ValueError(f"num_gpus_per_worker must be 0 or more, got {self.num_gpus_per_worker!r}")


@dataclass(frozen=True)
class _Job:
    """A checked, planned job: the rows tagged with their batch, and what each actor needs."""

    tagged: Any
    batches: int
    workers: WorkerOptions
    num_cpus: float

    @classmethod
    def prepare(cls, dataset: Any, frame: FrameOptions, workers: WorkerOptions) -> "_Job":
        """Read and plan (the options are checked already): all before any model actor starts."""
        if workers.decode_block_size is not None:
            _check_block_size(workers.model, workers.decode_block_size)
        rows = read_dataset(dataset, frame.columns)
        tagged, batches = _planned(rows, frame.id_column, frame.timestamp_column, frame.batch_size, frame.seed)
        return cls(tagged, batches, workers, _cpu_share(workers.num_cpus_per_worker, workers.concurrency))

    def run(self, actor: type, call_kwargs: dict) -> Any:
        """Each planned batch gathered on one worker and handed whole to one call of ``actor``."""
        ray = require_ray()
        return self.tagged.groupby(BATCH_COLUMN, num_partitions=min(self.batches, _partitions())).map_groups(
            actor,
            compute=ray.data.ActorPoolStrategy(size=self.workers.concurrency),
            fn_constructor_kwargs={"workers": self.workers, "threads": math.ceil(self.num_cpus)},
            fn_kwargs=call_kwargs,
            batch_format="pandas",
            num_cpus=self.num_cpus,
            num_gpus=self.workers.num_gpus_per_worker or None,
            max_restarts=-1,  # a dead actor is restarted ...
            max_task_retries=-1,  # ... and its batch retried
        )


def _check_block_size(model: str, decode_block_size: int) -> None:
    """The block size against the model's ``config.json`` alone: an error here, not in every actor."""
    from ..checkpoints.reading import read_config_json, resolve_config
    from ..families import family_of

    path = resolve_config(model)
    config = read_config_json(path)
    family_of(config, str(path)).check_decode_block_size(config, decode_block_size)


def _cpu_share(requested: float | None, concurrency: int) -> float:
    """CPUs each model actor reserves: ``requested``, else one, but never so many that the
    actors hold every CPU of the cluster: the tasks that read and group the rows need one,
    and Ray would wait for it forever."""
    cpus = require_ray().cluster_resources().get("CPU", 1.0)
    if requested is None:
        return max(0.1, min(1.0, (cpus - 1) / concurrency))
    if not requested > 0:
        raise ValueError(f"num_cpus_per_worker must be positive, got {requested!r}")
    if cpus - requested * concurrency < 1:
        raise ValueError(
            f"num_cpus_per_worker={requested:g} x concurrency={concurrency} leaves the cluster's {cpus:g} CPUs "
            "less than one for the tasks that read and group the rows; Ray would wait for it forever"
        )
    return float(requested)


def _planned(rows: Any, id_column: str, timestamp_column: str, batch_size: int, seed: int | None) -> tuple[Any, int]:
    """``rows`` with each item's batch number in :data:`BATCH_COLUMN`, and the number of batches.

    Items go longest first (by rows), ties by their stream key: the local engine's order
    for items without gaps, whatever order the rows arrive in.
    """
    # Each block's rows per item and latest timestamp, combined here: a map, not a shuffle
    # (a groupby costs seconds of scheduling even on a small input), and small: one row per
    # item and block.
    partial = rows.select_columns([id_column, timestamp_column]).map_batches(
        _item_stats, fn_kwargs={"id_column": id_column, "timestamp_column": timestamp_column},
        batch_format="pandas", batch_size=None,
    )  # fmt: skip
    stats = _numpy_backed(partial.to_pandas())
    if stats.empty:
        raise ValueError("the input holds no rows")
    stats = stats.groupby(id_column, sort=False).agg(rows=("rows", "sum"), last=("last", "max")).reset_index()
    ids, counts, last = stats[id_column], stats["rows"].to_numpy(), stats["last"]
    keys = item_keys(0 if seed is None else seed, ids, last).numpy()
    order = np.lexsort((keys, -counts))  # the last key sorts first
    batch_of = {ids.iloc[index]: position // batch_size for position, index in enumerate(order)}
    tagged = rows.map_batches(_tag_batch, fn_kwargs={"batch_of": batch_of, "id_column": id_column},
                              batch_format="pandas")  # fmt: skip
    return tagged, -(-len(order) // batch_size)


def _item_stats(rows: Any, id_column: str, timestamp_column: str) -> Any:
    grouped = rows.groupby(id_column, sort=False)[timestamp_column]
    return grouped.agg(rows="size", last="max").reset_index()


def _partitions() -> int:
    """Shuffle partitions of a groupby: two per CPU of the cluster (Ray's default, 200, costs
    seconds of scheduling on a small cluster and gains nothing)."""
    cpus = require_ray().cluster_resources().get("CPU", 1.0)
    return int(max(1, min(200, 2 * cpus)))


def _tag_batch(rows: Any, batch_of: dict, id_column: str) -> Any:
    rows[BATCH_COLUMN] = rows[id_column].map(batch_of).astype("int64")
    return rows


# Workers ---------------------------------------------------------------------------------------


class _ModelActor:
    """Loads the pipeline once per actor (and compiles lazily, once per shape)."""

    def __init__(self, workers: WorkerOptions, threads: int):
        import torch

        torch.set_num_threads(threads)  # the actor's share of the node, not all its cores
        dtype = None if workers.torch_dtype is None else getattr(torch, workers.torch_dtype)
        self.pipeline = TotoPipeline.from_pretrained(
            workers.model, device_map="cuda" if workers.num_gpus_per_worker > 0 else "cpu", torch_dtype=dtype,
            torch_compile=workers.compile, compile_cache_dir=workers.compile_cache_dir,
        )  # fmt: skip
        if workers.decode_block_size is not None:
            self.pipeline.decode_block_size = workers.decode_block_size
        self.hook = workers.hook

    def items(self, rows: Any) -> Any:
        if self.hook is not None:
            self.hook()
        return rows.drop(columns=BATCH_COLUMN)

    def for_model(self, frame: FrameOptions) -> FrameOptions:
        """A quantile model (Toto 2.0) draws no samples: the engine's default seed (0) is not
        passed on to it; any other seed is the pipeline's error."""
        if self.pipeline.family.output == "quantiles" and frame.seed == 0:
            return replace(frame, seed=None)
        return frame


class _ForecastActor(_ModelActor):
    def __call__(self, rows: Any, frame: FrameOptions) -> Any:
        rows = self.items(rows)
        # The whole planned batch in one call: the batches are the plan's.
        whole = replace(self.for_model(frame), batch_size=max(1, rows[frame.id_column].nunique()))
        return self.pipeline.predict_frame(rows, None, whole)


class _BacktestActor(_ModelActor):
    def __call__(self, rows: Any, frame: FrameOptions, options: Any) -> Any:
        from ..evaluation.backtest import score_items

        parts = score_items(self.pipeline, self.items(rows), self.for_model(frame), options)
        nested = parts.totals.copy()
        nested[SEASON_COLUMN] = nested[frame.id_column].map(parts.seasonality).astype("int64")
        horizon = frame.prediction_length
        for column in _horizon_columns(frame.timestamp_column, frame.quantile_levels):
            values = parts.forecasts[column].to_numpy()
            nested[column] = list(values.reshape(-1, horizon))  # (item, window, target) rows of H values
        return nested


def _horizon_columns(timestamp_column: str, levels: Sequence[float]) -> list[str]:
    """The forecast columns that vary along the horizon (one list per nested row)."""
    return [timestamp_column, "predictions", "mean", *(quantile_column(level) for level in levels)]


def _unnested(nested: Any, keys: list[str], horizon_columns: list[str]) -> Any:
    """Nested (item, window, target) rows back to the long forecast frame of the local backtest."""
    pd = require_pandas()
    lengths = nested[horizon_columns[0]].map(len).to_numpy()
    frame = {key: nested[key].repeat(lengths).to_numpy() for key in keys}
    for column in horizon_columns:
        frame[column] = np.concatenate(nested[column].to_list()) if len(nested) else np.array([])
    order = [keys[0], horizon_columns[0], *keys[1:], *horizon_columns[1:]]
    return pd.DataFrame(frame)[order]


def _numpy_backed(frame: Any) -> Any:
    """``frame`` with Ray's Arrow-backed columns as numpy ones, as the local backtest's frames hold."""
    pd = require_pandas()
    return pd.DataFrame({name: numpy_backed(frame[name]) for name in frame.columns}, index=frame.index)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
