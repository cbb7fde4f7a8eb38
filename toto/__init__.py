"""toto-compiled: Datadog's Toto forecasting model, rebuilt for ``torch.compile``."""

from . import _moved
from .config import TotoConfig
from .data.util.dataset import MaskedTimeseries
from .inference.forecaster import Forecast, TotoForecaster
from .model.toto import Toto
from .pipeline import TotoForecast, TotoPipeline

__version__ = "0.1.0"

_moved.install()

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
