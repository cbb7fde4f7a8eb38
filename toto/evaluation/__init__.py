"""Forecast evaluation: point and probabilistic metrics matching GluonTS's ``gluonts.ev`` (numpy only)."""

from .metrics import *  # noqa: F403  (the public names are metrics.__all__)
from .metrics import __all__  # noqa: F401
