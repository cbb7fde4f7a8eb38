#!/usr/bin/env bash
# Set up a development environment in the active Python (use a virtualenv).
# Installs torch 2.13.0 only when no torch is importable, so an existing
# (e.g. CUDA) build is left alone; then the package with its test extra, then
# the upstream oracle used by the parity tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install "torch==2.13.0"
fi
python -m pip install -e ".[test]"
python scripts/install_oracle.py
