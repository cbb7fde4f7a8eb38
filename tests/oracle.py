"""Access to upstream Toto 1.0 (toto-ts 0.2.0) and Toto 2.0 (toto-2 2.0.0), installed by ``scripts/install_oracle.py``.

Locally the parity tests skip when the oracle is missing; in CI (``CI`` set)
they fail instead, so parity is always checked there.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

import pytest

ORACLE_DIR = Path(__file__).resolve().parent.parent / ".oracle"
HOW_TO_INSTALL = "install it with: python scripts/install_oracle.py"


def import_oracle(module: str):
    """Import ``toto_upstream.<module>``, skipping (locally) or failing (CI) when unavailable."""
    if str(ORACLE_DIR) not in sys.path:
        sys.path.insert(0, str(ORACLE_DIR))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # upstream warns that xFormers is absent
            return importlib.import_module(f"toto_upstream.{module}")
    except ImportError as err:
        message = f"upstream oracle not importable ({err}); {HOW_TO_INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def import_toto2_oracle():
    """Upstream Toto 2.0 (``toto2`` from toto-2 2.0.0, with its u-muP libraries), skipping
    (locally) or failing (CI) when unavailable."""
    if str(ORACLE_DIR) not in sys.path:
        sys.path.insert(0, str(ORACLE_DIR))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gluonts' json backend note
            model = importlib.import_module("toto2.model")
            configuration = importlib.import_module("toto2.configuration")
    except ImportError as err:
        message = f"Toto 2.0 oracle not importable ({err}); {HOW_TO_INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return model.Toto2Model, configuration.Toto2ModelConfig
