"""``TotoPipeline``: the Chronos-style entry point for forecasts, data frames and backtests."""

from .pipeline import TotoForecast, TotoPipeline

__all__ = ["TotoForecast", "TotoPipeline"]
