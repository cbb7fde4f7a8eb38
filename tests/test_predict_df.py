"""TotoPipeline.predict_df: long frames in and out, ragged items, frequencies, exogenous columns, bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")

from tests.compile_backends import HEALTH  # noqa: E402
from tests.compile_health import steady_state  # noqa: E402
from toto import TotoPipeline  # noqa: E402
from toto.inference.keyed_random import series_key  # noqa: E402

H = 20  # more than one tiny patch (16), so decode steps run
LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    return TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=False)


def long_frame(lengths, freq="h", start="2024-01-01", seed=0, columns=("target",), drop=()):
    """Items ``s0, s1, ...`` of the given lengths, each starting at ``start``; ``drop`` removes rows by position."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, n in enumerate(lengths):
        stamps = pd.date_range(start, periods=n, freq=freq) if freq else np.arange(n) * 5 + 100
        values = {c: 10 + rng.normal(size=n).cumsum() for c in columns}
        parts.append(pd.DataFrame({"item_id": f"s{i}", "timestamp": stamps, **values}))
    frame = pd.concat(parts, ignore_index=True)
    return frame.drop(index=list(drop)).reset_index(drop=True)


def samples_of(pipeline, context, **kwargs):
    forecasts = pipeline.predict(context, H, num_samples=64, samples_per_batch=64, **kwargs)
    return np.concatenate([f.samples for f in forecasts])  # (items, variates, H, samples)


def test_matches_predict_on_the_same_series(pipeline):
    df = long_frame([50, 80, 33], drop=[5, 6, 60])  # two missing rows in s0, one in s1
    out = pipeline.predict_df(
        df.sample(frac=1, random_state=0), prediction_length=H, quantile_levels=LEVELS, num_samples=64,
        batch_size=2, seed=3,
    )
    assert list(out.columns) == ["item_id", "timestamp", "target_name", "predictions", "mean", "0.1", "0.5", "0.9"]
    # The same series as predict sees them: on the hourly grid, NaN where rows are missing.
    context = []
    for item in ("s0", "s1", "s2"):
        rows = df[df.item_id == item].set_index("timestamp")["target"]
        grid = pd.date_range(rows.index.min(), rows.index.max(), freq="h")
        context.append(torch.tensor(rows.reindex(grid).to_numpy(), dtype=torch.float32))
    # Item streams are keyed by (seed, id, last context timestamp), the keys predict takes.
    keys = [series_key(3, item, df[df.item_id == item].timestamp.max()) for item in ("s0", "s1", "s2")]
    samples = samples_of(pipeline, context, batch_size=2, sample_keys=keys)[:, 0].astype(np.float64)
    order = {item: i for i, item in enumerate(pd.unique(df.sample(frac=1, random_state=0).item_id))}
    for item, rows in out.groupby("item_id"):
        paths = samples[int(item[1:])]
        assert np.allclose(rows["0.1"], np.quantile(paths, 0.1, axis=-1), rtol=1e-6, atol=1e-6)
        assert np.allclose(rows["predictions"], np.median(paths, axis=-1), rtol=1e-6, atol=1e-6)
        assert np.allclose(rows["mean"], paths.mean(axis=-1), rtol=1e-6, atol=1e-6)
        last = df[df.item_id == item].timestamp.max()
        assert list(rows.timestamp) == list(pd.date_range(last, periods=H + 1, freq="h")[1:])
    assert list(pd.unique(out.item_id)) == sorted(order, key=order.get)  # items in order of first appearance
    assert (out.target_name == "target").all() and out.timestamp.dtype == df.timestamp.dtype


def test_multivariate_target_and_exogenous_future(pipeline):
    df = long_frame([40, 60], columns=("a", "b", "load"))
    future = []
    for item, rows in df.groupby("item_id"):
        stamps = pd.date_range(rows.timestamp.max(), periods=H + 1, freq="h")[1:]
        future.append(pd.DataFrame({"item_id": item, "timestamp": stamps, "load": np.linspace(0, 1, H)}))
    future_df = pd.concat(future, ignore_index=True)
    out = pipeline.predict_df(
        df, future_df, target=["a", "b"], prediction_length=H, quantile_levels=LEVELS, num_samples=64, seed=0
    )
    assert len(out) == 2 * 2 * H and set(out.target_name) == {"a", "b"}
    context = np.full((2, 3, 60), np.nan)
    for i, (_, rows) in enumerate(df.groupby("item_id")):
        context[i, :, 60 - len(rows) :] = rows[["a", "b", "load"]].to_numpy().T
    covariates = np.stack([np.linspace(0, 1, H)] * 2)[:, None]
    keys = [series_key(0, item, rows.timestamp.max()) for item, rows in df.groupby("item_id")]
    samples = samples_of(
        pipeline, torch.tensor(context, dtype=torch.float32), sample_keys=keys, future_covariates=covariates
    )
    for i, item in enumerate(("s0", "s1")):
        for v, name in enumerate(("a", "b")):
            rows = out[(out.item_id == item) & (out.target_name == name)]
            assert np.allclose(rows["0.9"], np.quantile(samples[i, v].astype(np.float64), 0.9, axis=-1), rtol=1e-6)


@pytest.mark.parametrize(
    ("freq", "expected_next"),
    [("MS", "2024-04-01"), ("W-SUN", "2024-01-28"), ("15min", "2024-01-01 00:45"), ("B", "2024-01-04")],
)
def test_future_timestamps_continue_the_inferred_frequency(pipeline, freq, expected_next):
    df = long_frame([3], freq=freq)  # 2024-01-01 is a Monday
    out = pipeline.predict_df(df, prediction_length=2, num_samples=4)
    assert out.timestamp.iloc[0] == pd.date_range("2024-01-01", periods=4, freq=freq)[3] == pd.Timestamp(expected_next)


def test_frequency_from_other_items_then_median_gap(pipeline):
    # s0 misses a row (no inferable frequency on its own) but lies on s1's daily grid.
    df = long_frame([10, 12], freq="D", drop=[4])
    out = pipeline.predict_df(df, prediction_length=3, num_samples=4)
    assert out[out.item_id == "s0"].timestamp.iloc[0] == pd.Timestamp("2024-01-11")
    # Every item has gaps: the median gap (2 days) is the step.
    gappy = long_frame([9], freq="2D", drop=[3, 6])
    out = pipeline.predict_df(gappy, prediction_length=2, num_samples=4)
    assert list(out.timestamp) == [pd.Timestamp("2024-01-19"), pd.Timestamp("2024-01-21")]


def test_numeric_timestamps(pipeline):
    df = long_frame([30, 25], freq=None)  # 100, 105, ...
    out = pipeline.predict_df(df, prediction_length=3, num_samples=4)
    assert list(out[out.item_id == "s1"].timestamp) == [100 + 5 * 25, 105 + 5 * 25, 110 + 5 * 25]


def test_results_do_not_depend_on_the_input_row_order(pipeline):
    df = long_frame([30, 45, 20])
    first = pipeline.predict_df(df, prediction_length=H, num_samples=16, seed=1)
    second = pipeline.predict_df(df.iloc[::-1], prediction_length=H, num_samples=16, seed=1)
    key = ["item_id", "timestamp"]
    pd.testing.assert_frame_equal(first.sort_values(key, ignore_index=True), second.sort_values(key, ignore_index=True))


def frame_with(**changes):
    df = long_frame([30, 30])
    for column, (row, value) in changes.items():
        df[column] = df[column].astype(object)
        df.loc[row, column] = value
    return df


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda: long_frame([30]).drop(columns="target"), {}, "no column(s) ['target']"),
        (lambda: long_frame([30]), {"target": ["target", "target"]}, "distinct"),
        (lambda: pd.concat([long_frame([30]), long_frame([30]).iloc[[4]]]), {}, "duplicate rows for item 's0'"),
        (lambda: frame_with(target=(35, "abc")), {}, "column 'target' is not numeric: row 35 (item 's1') holds 'abc'"),
        (lambda: frame_with(target=(3, np.inf)), {}, "±inf in row 3"),
        (lambda: frame_with(timestamp=(7, "yesterday")), {}, "timestamp column 'timestamp' is not a timestamp"),
        (lambda: long_frame([30, 10]).assign(target=lambda d: d.target.where(d.item_id == "s0")), {},
         "item 's1' has no observed value in column 'target'"),
        (lambda: long_frame([30]), {"quantile_levels": (0.1, 1.0)}, "quantile_levels"),
        (lambda: long_frame([30]), {"batch_size": 0}, "batch_size"),
        (lambda: "not a frame", {}, "pandas DataFrame"),
    ],
    ids=["missing-column", "repeated-target", "duplicate", "non-numeric", "inf", "bad-timestamp", "no-observed",
         "levels", "batch-size", "not-a-frame"],
)
def test_bad_input_names_the_column_or_item(pipeline, make, kwargs, message):
    with pytest.raises((ValueError, TypeError)) as info:
        pipeline.predict_df(make(), prediction_length=H, num_samples=4, **kwargs)
    assert message in str(info.value)


def test_off_grid_timestamps_name_the_item(pipeline):
    df = long_frame([10])
    df.loc[5, "timestamp"] += pd.Timedelta(minutes=7)
    with pytest.raises(ValueError, match="item 's0' has timestamps off a regular grid"):
        pipeline.predict_df(df, prediction_length=H, num_samples=4)


def future_for(df, steps=H, shift=0):
    parts = []
    for item, rows in df.groupby("item_id"):
        stamps = pd.date_range(rows.timestamp.max(), periods=steps + 1 + shift, freq="h")[1 + shift :]
        parts.append(pd.DataFrame({"item_id": item, "timestamp": stamps, "load": 1.0}))
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize(
    ("make_future", "message"),
    [
        (lambda df: future_for(df, steps=H - 1), "item 's0' must have exactly the 20 timestamp values"),
        (lambda df: future_for(df, shift=1), "item 's0' must have exactly the 20 timestamp values"),
        (lambda df: future_for(df)[lambda f: f.item_id == "s0"], "no rows for item 's1'"),
        (lambda df: pd.concat([future_for(df), future_for(df)[:H].assign(item_id="zz")]), "item 'zz' is not in df"),
        (lambda df: future_for(df).assign(target=1.0), "must not hold target column(s) ['target']"),
        (lambda df: future_for(df).assign(other=1.0), "['other'] are not in df"),
        (lambda df: future_for(df)[["item_id", "timestamp"]], "no exogenous columns"),
        (lambda df: future_for(df).assign(load=lambda f: f.load.where(f.index != 3)), "'load' is missing in row 3"),
    ],
    ids=["short", "shifted", "missing-item", "extra-item", "target-column", "unknown-column", "none", "nan"],
)
def test_future_df_must_line_up_with_the_horizon(pipeline, make_future, message):
    df = long_frame([30, 40], columns=("target", "load"))
    with pytest.raises(ValueError) as info:
        pipeline.predict_df(df, make_future(df), prediction_length=H, num_samples=4)
    assert message in str(info.value)


def test_compiled_predict_df_has_no_recompiles_in_steady_state(tiny_checkpoint):
    pipeline = TotoPipeline.from_pretrained(str(tiny_checkpoint), device_map="cpu", torch_compile=True, compile_backend=HEALTH)
    df = long_frame([70, 60, 50, 40, 35])  # batches of 2: [70, 60], [50, 40], [35]
    counts = steady_state([lambda: pipeline.predict_df(df, prediction_length=H, num_samples=8, batch_size=2)])
    assert counts.graph_breaks == 0 and counts.recompiles == 0 and counts.graphs == 0
    assert pipeline.last_run_metadata["num_batches"] == 3


def test_core_import_leaves_pandas_out():
    code = "import sys, toto, toto.evaluation, toto.frames, toto.frames.plot; sys.exit('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_pandas_names_the_extra(pipeline, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"toto-compiled\[pandas\]"):
        pipeline.predict_df(object(), prediction_length=H)


def test_output_keeps_integer_ids_and_time_zones(pipeline):
    df = long_frame([30, 25]).assign(item_id=lambda d: d.item_id.str[1:].astype(int))
    df["timestamp"] = df.timestamp.dt.tz_localize("Europe/Paris")
    out = pipeline.predict_df(df, prediction_length=3, num_samples=4)
    assert out.item_id.dtype == np.int64 and list(pd.unique(out.item_id)) == [0, 1]
    assert out.timestamp.dtype == df.timestamp.dtype
    assert out.timestamp.iloc[0] == df[df.item_id == 0].timestamp.max() + pd.Timedelta(hours=1)
