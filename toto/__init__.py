"""toto-compiled: Datadog's Toto forecasting model, rebuilt for ``torch.compile``."""

from typing import TYPE_CHECKING

from . import _moved
from .config import TotoConfig

__version__ = "0.1.0"

_moved.install()

if TYPE_CHECKING:
    from .data.util.dataset import MaskedTimeseries
    from .inference.forecaster import Forecast, TotoForecaster
    from .model.toto import Toto
    from .pipeline import TotoForecast, TotoPipeline

# Imported on first use (they import torch): ``toto-compiled --help`` and ``toto.config`` stay light.
_LAZY = {
    "MaskedTimeseries": ".data.util.dataset",
    "Forecast": ".inference.forecaster",
    "TotoForecaster": ".inference.forecaster",
    "Toto": ".model.toto",
    "TotoForecast": ".pipeline",
    "TotoPipeline": ".pipeline",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'toto' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Forecast",
    "MaskedTimeseries",
    "Toto",
    "TotoConfig",
    "TotoForecast",
    "TotoForecaster",
    "TotoPipeline",
    "__version__",
]
