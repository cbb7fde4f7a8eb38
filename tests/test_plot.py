"""toto.frames.plot: forecast and backtest figures from hand-built long frames."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
pd = pytest.importorskip("pandas")

from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import imread  # noqa: E402

from toto.frames.plot import plot_backtest, plot_forecast  # noqa: E402

LEVELS = (0.1, 0.5, 0.9)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def timestamps(kind: str, start: int, count: int):
    if kind == "datetime":
        return pd.date_range("2024-01-01", periods=start + count, freq="h")[start:]
    return np.arange(start, start + count)


def history_frame(items=("A", "B"), targets=("target",), length=48, kind="datetime") -> pd.DataFrame:
    parts = []
    for n, item in enumerate(items):
        t = np.arange(length)
        part = {"item_id": item, "timestamp": timestamps(kind, 0, length)}
        for j, name in enumerate(targets):
            part[name] = np.sin(t / 5 + n + j) * (j + 1) + 10 * j
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def forecast_rows(item, name, kind, start, horizon, offset, **extra) -> pd.DataFrame:
    median = offset + np.linspace(0, 1, horizon)
    rows = {
        "item_id": item,
        "timestamp": timestamps(kind, start, horizon),
        "target_name": name,
        "predictions": median,
        "mean": median + 0.05,
        **{str(float(q)): median + 4 * (q - 0.5) for q in LEVELS},
        **extra,
    }
    return pd.DataFrame(rows)


def forecast_frame(items=("A", "B"), targets=("target",), start=48, horizon=12, kind="datetime") -> pd.DataFrame:
    parts = [
        forecast_rows(item, name, kind, start, horizon, offset=10 * n + j)
        for n, item in enumerate(items)
        for j, name in enumerate(targets)
    ]
    return pd.concat(parts, ignore_index=True)


def backtest_frame(kind="datetime", windows=3, horizon=8, length=48) -> pd.DataFrame:
    """Windows ending at the end of the series, earliest first, for items A and B."""
    parts = []
    for n, item in enumerate(("A", "B")):
        for w in range(windows):
            start = length - (windows - w) * horizon
            cutoff = timestamps(kind, start - 1, 1)[0]
            parts.append(forecast_rows(item, "target", kind, start, horizon, offset=n + w, window=w, cutoff=cutoff))
    return pd.concat(parts, ignore_index=True)


def assert_png_has_content(path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    height, width = image.shape[:2]
    assert height >= 200 and width >= 400
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05  # not a blank canvas
    assert len(np.unique(np.round(rgb * 255).astype(np.uint8), axis=0)) > 20  # lines, band, text


def line(ax, label):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return found


@pytest.mark.parametrize("kind", ["datetime", "integer"])
def test_forecast_univariate(tmp_path, kind):
    history, forecast = history_frame(kind=kind), forecast_frame(kind=kind)
    path = tmp_path / "forecast.png"
    fig = plot_forecast(history, forecast, item_id="B", path=path)

    assert isinstance(fig, Figure)
    assert_png_has_content(path)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 2
    expected = forecast[forecast["item_id"] == "B"]
    np.testing.assert_allclose(line(ax, "median").get_ydata(), expected["predictions"])
    np.testing.assert_allclose(line(ax, "history").get_ydata(), history.loc[history["item_id"] == "B", "target"])
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    band_y = band.get_paths()[0].vertices[:, 1]
    assert band_y.min() == pytest.approx(expected["0.1"].min())
    assert band_y.max() == pytest.approx(expected["0.9"].max())
    assert ax.get_ylabel() == "target" and ax.get_xlabel() == "timestamp"
    assert "'B'" in fig._suptitle.get_text()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["history", "10–90% interval", "median"]


def test_forecast_defaults_to_first_item_and_trims_history():
    history, forecast = history_frame(kind="integer"), forecast_frame(kind="integer")
    fig = plot_forecast(history, forecast, max_history=10, title="custom")
    ax = fig.axes[0]
    np.testing.assert_array_equal(line(ax, "history").get_xdata(), np.arange(38, 48))
    np.testing.assert_allclose(line(ax, "median").get_ydata(), forecast.loc[forecast["item_id"] == "A", "predictions"])
    assert fig._suptitle.get_text() == "custom"


def test_forecast_multivariate(tmp_path):
    targets = ["cpu", "memory"]
    history, forecast = history_frame(targets=targets), forecast_frame(targets=targets)
    path = tmp_path / "multi.png"
    fig = plot_forecast(history, forecast, item_id="A", target=targets, path=path)

    assert_png_has_content(path)
    assert len(fig.axes) == 2
    for ax, name in zip(fig.axes, targets):
        assert ax.get_ylabel() == name
        rows = forecast[(forecast["item_id"] == "A") & (forecast["target_name"] == name)]
        np.testing.assert_allclose(line(ax, "median").get_ydata(), rows["predictions"])
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1
    assert fig.axes[-1].get_xlabel() == "timestamp"


def test_forecast_custom_columns_and_interval():
    history = history_frame(kind="integer").rename(columns={"item_id": "series", "timestamp": "t"})
    forecast = forecast_frame(kind="integer").rename(columns={"item_id": "series", "timestamp": "t"})
    fig = plot_forecast(history, forecast, id_column="series", timestamp_column="t", interval=(0.5, 0.9))
    (band,) = fig.axes[0].collections
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(forecast.loc[:11, "0.5"].min())
    assert fig.axes[0].get_xlabel() == "t"


@pytest.mark.parametrize("kind", ["datetime", "integer"])
def test_backtest(tmp_path, kind):
    history, forecasts = history_frame(kind=kind), backtest_frame(kind=kind)
    path = tmp_path / "backtest.png"
    fig = plot_backtest(history, forecasts, item_id="A", path=path)

    assert_png_has_content(path)
    (ax,) = fig.axes
    np.testing.assert_allclose(line(ax, "actual").get_ydata(), history.loc[history["item_id"] == "A", "target"])
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 3
    colours = set()
    for w in range(3):
        rows = forecasts[(forecasts["item_id"] == "A") & (forecasts["window"] == w)]
        median = line(ax, f"window {w}")
        np.testing.assert_allclose(median.get_ydata(), rows["predictions"])
        colours.add(median.get_color())
    assert len(colours) == 3
    cutoffs = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(cutoffs) == 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels.count("cutoff") == 1 and "window 2" in labels
    assert "Backtest" in fig._suptitle.get_text()


def test_backtest_vertical_lines_sit_at_cutoffs():
    forecasts = backtest_frame(kind="integer")
    fig = plot_backtest(history_frame(kind="integer"), forecasts)
    xs = sorted(ln.get_xdata()[0] for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--")
    assert xs == sorted(forecasts.loc[forecasts["item_id"] == "A", "cutoff"].unique())


def test_unknown_item():
    with pytest.raises(ValueError, match="'Z'"):
        plot_forecast(history_frame(), forecast_frame(), item_id="Z")
    with pytest.raises(ValueError, match="'C'.*history"):
        plot_forecast(history_frame(items=("A",)), forecast_frame(items=("C",)))
    with pytest.raises(ValueError, match="'Z'"):
        plot_backtest(history_frame(), backtest_frame(), item_id="Z")


def test_missing_quantile_column():
    with pytest.raises(ValueError, match=r"'0\.05'.*'0\.95'.*available.*'0\.1', '0\.5', '0\.9'"):
        plot_forecast(history_frame(), forecast_frame(), interval=(0.05, 0.95))
    forecast = forecast_frame().drop(columns="0.9")
    with pytest.raises(ValueError, match=r"\['0\.9'\]"):
        plot_forecast(history_frame(), forecast)


def test_missing_target():
    with pytest.raises(ValueError, match="'load'"):
        plot_forecast(history_frame(), forecast_frame(), target="load")
    # Present in the history but never forecast.
    history = history_frame(targets=("target", "load"))
    with pytest.raises(ValueError, match="'load'"):
        plot_forecast(history, forecast_frame(), target=["target", "load"])


def test_missing_backtest_columns():
    with pytest.raises(ValueError, match="'window'"):
        plot_backtest(history_frame(), forecast_frame())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"interval": (0.9, 0.1)}, "interval"),
        ({"interval": (0.1,)}, "interval"),
        ({"interval": (0.0, 0.9)}, "interval"),
        ({"max_history": 0}, "max_history"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_forecast(history_frame(), forecast_frame(), **kwargs)


def test_rejects_non_frames():
    with pytest.raises(TypeError, match="history"):
        plot_forecast({"item_id": []}, forecast_frame())


def test_importing_toto_leaves_matplotlib_alone():
    code = "import sys, toto, toto.frames.plot; assert 'matplotlib' not in sys.modules and 'pandas' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"toto-compiled\[plot\]"):
        plot_forecast(history_frame(), forecast_frame())


def test_missing_pandas_names_the_extra(monkeypatch):
    history, forecast = history_frame(), forecast_frame()
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"toto-compiled\[pandas\]"):
        plot_forecast(history, forecast)


def test_leaves_pyplot_and_backend_alone(tmp_path):
    pyplot = pytest.importorskip("matplotlib.pyplot")
    backend, figures = matplotlib.get_backend(), pyplot.get_fignums()
    plot_backtest(history_frame(), backtest_frame(), path=tmp_path / "b.png")
    assert matplotlib.get_backend() == backend
    assert pyplot.get_fignums() == figures
