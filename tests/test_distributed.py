"""The Ray engine (``toto.engines.ray``) on a local 2-CPU cluster with the tiny checkpoint: equality with
the local engine, independence from partitioning, a worker killed mid-job, bad input, atomic output."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
ray = pytest.importorskip("ray", reason="the Ray engine needs the extra toto-compiled[ray]")

import torch  # noqa: E402

from toto import TotoPipeline  # noqa: E402
from toto.engines.ray import (  # noqa: E402
    BATCH_COLUMN,
    _ForecastActor,
    WorkerOptions,
    backtest_dataset,
    connect,
    forecast_dataset,
    read_dataset,
    write_parquet_folder,
)
from toto.evaluation.backtest import backtest  # noqa: E402
from toto.frames.options import FrameOptions  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster per session, on one worker

H = 8
KEYS = ["item_id", "target_name", "timestamp"]
VALUES = ["predictions", "mean", "0.1", "0.5", "0.9"]
OPTIONS = dict(prediction_length=H, quantile_levels=[0.1, 0.5, 0.9], num_samples=16, seed=0)


@pytest.fixture(scope="module", autouse=True)
def functions_by_value():
    """Workers cannot import this test module: the hooks and functions defined here travel by value."""
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    """40 items of ragged lengths (20 to 90 hourly steps) and starts, without gaps."""
    rng = np.random.default_rng(0)
    parts = []
    for i in range(40):
        n = int(rng.integers(20, 90))
        start = pd.Timestamp("2024-01-01") + pd.Timedelta(hours=int(rng.integers(0, 50)))
        stamps = pd.date_range(start, periods=n, freq="h")
        parts.append(pd.DataFrame({"item_id": f"s{i:02d}", "timestamp": stamps, "target": 10 + rng.normal(size=n).cumsum()}))
    return pd.concat(parts, ignore_index=True).sample(frac=1, random_state=1)  # rows in no order


@pytest.fixture(scope="module")
def local_pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Sorted by item, target and time, on numpy dtypes (Ray returns Arrow-backed columns)."""
    frame = frame.sort_values(KEYS).reset_index(drop=True)
    frame = frame.assign(item_id=frame.item_id.astype(str), target_name=frame.target_name.astype(str),
                         timestamp=pd.DatetimeIndex(frame.timestamp))  # fmt: skip
    return frame.astype({column: np.float64 for column in VALUES})


def run(ray_cluster, panel, checkpoint, **options):
    dataset = ray_cluster.data.from_pandas(panel)
    return ordered(forecast_dataset(dataset, model=checkpoint, **{**OPTIONS, "compile": False, **options}).to_pandas())


@pytest.fixture(scope="module")
def two_workers(ray_cluster, panel, tiny_checkpoint):
    return run(ray_cluster, panel, tiny_checkpoint, batch_size=8, concurrency=2)


def test_two_workers_equal_the_local_engine(two_workers, panel, local_pipeline):
    local = ordered(local_pipeline.predict_df(panel, batch_size=8, **OPTIONS))
    assert len(two_workers) == 40 * H and two_workers.groupby("item_id").size().eq(H).all()
    pd.testing.assert_frame_equal(two_workers[KEYS], local[KEYS])
    # The same batches as the local engine plans them (rows without gaps), so the same numbers, bit for bit.
    np.testing.assert_array_equal(two_workers[VALUES].to_numpy(float), local[VALUES].to_numpy(float))


def test_samples_per_item_do_not_depend_on_batching_or_workers(ray_cluster, two_workers, panel, tiny_checkpoint):
    one_worker = run(ray_cluster, panel, tiny_checkpoint, batch_size=5, concurrency=1)
    pd.testing.assert_frame_equal(one_worker[KEYS], two_workers[KEYS])
    # Other batches put an item at other positions of the padded batch: the same draws, through
    # model outputs that differ only in rounding.
    np.testing.assert_allclose(one_worker[VALUES].to_numpy(float), two_workers[VALUES].to_numpy(float), rtol=1e-5, atol=1e-5)


def test_a_worker_loads_once_with_the_compile_settings_and_cache(panel, tiny_checkpoint, tmp_path, monkeypatch):
    # The actor's own code, run here: compiling inside Ray workers costs minutes of CI on 2 cores,
    # and compile caches are tested in test_compile_cache.py. A chosen inductor folder keeps the
    # cache from moving this process's inductor cache.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-of-this-test"))
    threads = torch.get_num_threads()
    try:
        actor = _ForecastActor(WorkerOptions(str(tiny_checkpoint), compile=True, compile_cache_dir=str(tmp_path)), 1)
        assert torch.get_num_threads() == 1  # its share of the node, not every core
    finally:
        torch.set_num_threads(threads)
    assert actor.pipeline.compile_settings.enabled
    assert actor.pipeline.forecaster._compile_cache.directory == tmp_path.resolve()
    items = panel[panel.item_id.isin(["s00", "s01"])].assign(**{BATCH_COLUMN: 7})
    pipeline = actor.pipeline
    frame = FrameOptions(**OPTIONS, id_column="item_id", timestamp_column="timestamp", target=["target"])
    first, second = actor(items, frame), actor(items, frame)
    assert actor.pipeline is pipeline and BATCH_COLUMN not in first.columns
    pd.testing.assert_frame_equal(first, second)


@ray.remote
class Killer:
    """Kills the first worker that reports in, once."""

    def __init__(self):
        self.killed = False

    def report(self, worker) -> None:
        if not self.killed:
            self.killed = True
            ray.kill(worker, no_restart=False)

    def has_killed(self) -> bool:
        return self.killed


def report_to_killer() -> None:
    """The worker hook: runs in each model actor before each batch."""
    killer = ray.get_actor("toto-test-killer")
    ray.get(killer.report.remote(ray.get_runtime_context().current_actor))


def test_a_worker_killed_mid_job_is_restarted_and_nothing_is_lost(ray_cluster, panel, tiny_checkpoint, local_pipeline):
    items = panel[panel.item_id.isin([f"s{i:02d}" for i in range(12)])]
    killer = Killer.options(name="toto-test-killer").remote()
    try:
        survived = run(ray_cluster, items, tiny_checkpoint, batch_size=3, concurrency=2, _worker_hook=report_to_killer)
        assert ray.get(killer.has_killed.remote())
    finally:
        ray.kill(killer)
    # Every item exactly once, and (seeded) the very numbers of a run without a failure.
    assert not survived.duplicated(KEYS).any()
    pd.testing.assert_frame_equal(survived, ordered(local_pipeline.predict_df(items, batch_size=3, **OPTIONS)))


def test_backtest_metrics_equal_the_single_process_backtest(ray_cluster, panel, tiny_checkpoint, local_pipeline):
    options = dict(prediction_length=H, windows=2, stride=4, quantile_levels=[0.1, 0.5, 0.9], num_samples=16, seed=0)
    items = panel[panel.item_id.isin([f"s{i:02d}" for i in range(12)])]
    dataset = ray_cluster.data.from_pandas(items)
    remote = backtest_dataset(dataset, model=tiny_checkpoint, batch_size=4, concurrency=2, compile=False, **options)
    local = backtest(local_pipeline, items, batch_size=4, **options)
    pd.testing.assert_frame_equal(remote.summary, local.summary, rtol=1e-5)
    pd.testing.assert_frame_equal(remote.per_window, local.per_window, rtol=1e-5)
    per_item = remote.per_item.assign(item_id=remote.per_item.item_id.astype(str)).sort_values("item_id")
    expected = local.per_item.sort_values("item_id")
    pd.testing.assert_frame_equal(per_item.reset_index(drop=True), expected.reset_index(drop=True), rtol=1e-5)
    assert remote.seasonality == local.seasonality
    forecasts = remote.forecasts.to_pandas()
    assert list(forecasts.columns) == list(local.forecasts.columns)
    assert len(forecasts) == len(local.forecasts) == 12 * 2 * H


def test_missing_column_is_named_before_any_worker_starts(ray_cluster, panel, tiny_checkpoint, tmp_path):
    path = tmp_path / "rows.parquet"
    panel.drop(columns="target").to_parquet(path)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"rows\.parquet: missing column 'target'"):
        forecast_dataset(str(path), model=tiny_checkpoint, **OPTIONS, _worker_hook=pytest.fail)
    assert time.perf_counter() - started < 30  # no model was loaded


def test_unreadable_parquet_is_named(ray_cluster, tiny_checkpoint, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.parquet"):
        forecast_dataset(path, model=tiny_checkpoint, **OPTIONS)
    with pytest.raises(ValueError, match="does not exist"):
        read_dataset(tmp_path / "absent.parquet", ["item_id"])


def test_bad_options_fail_before_reading(tiny_checkpoint):
    with pytest.raises(ValueError, match="concurrency"):
        forecast_dataset("unused.parquet", model=tiny_checkpoint, **OPTIONS, concurrency=0)
    with pytest.raises(ValueError, match="Ray address"):
        connect("no-port-here")


def test_unreachable_address_is_one_error_naming_it():
    # A fresh process: this one already has a cluster, and connect() would reuse it.
    code = "from toto.engines.ray import connect; connect('127.0.0.1:9')"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and time.perf_counter() - started < 30
    assert "ConnectionError: cannot reach a Ray cluster at '127.0.0.1:9'" in result.stderr


def fail_on_item_s03(rows):
    if (rows["item_id"] == "s03").any():
        raise RuntimeError("disk full")
    return rows


def test_parquet_folder_is_written_whole_or_not_at_all(ray_cluster, panel, tmp_path):
    out = tmp_path / "forecasts"
    dataset = ray_cluster.data.from_pandas(panel).repartition(4)
    with pytest.raises(Exception, match="disk full"):
        write_parquet_folder(dataset.map_batches(fail_on_item_s03, batch_format="pandas"), out)
    assert list(tmp_path.iterdir()) == []  # neither the output nor its staging folder
    write_parquet_folder(dataset, out)
    assert len(pd.read_parquet(out)) == len(panel)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_parquet_folder(dataset, out)
    write_parquet_folder(dataset.limit(5), out, overwrite=True)
    assert len(pd.read_parquet(out)) == 5 and [p.name for p in tmp_path.iterdir()] == ["forecasts"]


def test_the_core_does_not_import_ray():
    code = "import sys, toto, toto.pipeline, toto.evaluation; assert 'ray' not in sys.modules, 'ray imported'"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"toto-compiled\[ray\]"):
        read_dataset("x.parquet", ["item_id"])


def test_a_toto2_checkpoint_runs_on_the_ray_engine(ray_cluster, panel, tmp_path):
    """A quantile model behind the same engine: its knots and median, as the local engine gives them."""
    from checkpoints import TINY_TOTO2_CONFIG, write_random_toto2

    checkpoint = write_random_toto2(tmp_path / "toto2", TINY_TOTO2_CONFIG, seed=7)
    options = {k: v for k, v in OPTIONS.items() if k not in ("num_samples", "seed")}
    dataset = ray_cluster.data.from_pandas(panel)
    remote = ordered(forecast_dataset(dataset, model=checkpoint, batch_size=8, concurrency=2, compile=False,
                                      **options).to_pandas())  # fmt: skip
    local = ordered(TotoPipeline.from_pretrained(str(checkpoint), device_map="cpu").predict_df(panel, batch_size=8,
                                                                                                **options))  # fmt: skip
    pd.testing.assert_frame_equal(remote[KEYS], local[KEYS])
    np.testing.assert_array_equal(remote[VALUES].to_numpy(float), local[VALUES].to_numpy(float))
    assert (remote["predictions"] == remote["mean"]).all()  # a quantile model's mean is its median

    # The workers decode in the blocks asked for: blocks of one patch (16 steps) feed each median back.
    options["prediction_length"] = 40
    remote = ordered(forecast_dataset(dataset, model=checkpoint, batch_size=8, compile=False, decode_block_size=16,
                                      **options).to_pandas())  # fmt: skip
    pipeline = TotoPipeline.from_pretrained(str(checkpoint), device_map="cpu")
    one_block = ordered(pipeline.predict_df(panel, batch_size=8, **options))
    pipeline.decode_block_size = 16
    local = ordered(pipeline.predict_df(panel, batch_size=8, **options))
    np.testing.assert_array_equal(remote[VALUES].to_numpy(float), local[VALUES].to_numpy(float))
    assert not np.array_equal(remote[VALUES].to_numpy(float), one_block[VALUES].to_numpy(float))
    with pytest.raises(ValueError, match=r"decode_block_size \(20\) must be a multiple of the patch size \(16\)"):
        forecast_dataset(dataset, model=checkpoint, decode_block_size=20, _worker_hook=pytest.fail, **options)
