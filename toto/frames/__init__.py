"""Long data frames in and out of the pipeline (:mod:`.panel`), data files for the commands
(:mod:`.io`) and plots (:mod:`.plot`). Needs the extras ``pandas`` / ``plot``; pandas and
matplotlib are imported on first use."""

from .panel import (
    PANDAS_EXTRA,
    CellError,
    Item,
    Panel,
    check_quantile_levels,
    forecast_frame,
    numpy_backed,
    quantile_column,
    read_panel,
    require_pandas,
    target_names,
)

__all__ = [
    "PANDAS_EXTRA",
    "CellError",
    "Item",
    "Panel",
    "check_quantile_levels",
    "forecast_frame",
    "numpy_backed",
    "quantile_column",
    "read_panel",
    "require_pandas",
    "target_names",
]
