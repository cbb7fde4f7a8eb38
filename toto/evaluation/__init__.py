"""Forecast evaluation: GluonTS's metrics (numpy only) and rolling-origin backtests (pandas, on first use)."""

from .backtest import BacktestResult, backtest, seasonality_of
from .metrics import *  # noqa: F403  (the public names are metrics.__all__)
from .metrics import __all__ as _metric_names

__all__ = ["BacktestResult", "backtest", "seasonality_of", *_metric_names]
