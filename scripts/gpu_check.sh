#!/usr/bin/env bash
# Everything that needs a GPU, in one go: `toto-compiled check --quick` on CUDA, parity on
# CUDA (tf32 off), compile health under CUDA graphs (reduce-overhead), and the benchmark table.
#
# The oracle's extra dependencies travel as wheels in .whl/ (see docs/PERFORMANCE.md);
# the oracle itself in .oracle/ (python scripts/install_oracle.py). Extra arguments go
# to scripts/bench.py, e.g. --runners ours-eager,ours-compiled,upstream-eager;
# PARITY_SCENARIOS=univariate,large_magnitude narrows the parity part.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
check=0
python3 -m toto.cli check --quick --device cuda || check=$?  # a failed check must not hide the rest
python3 scripts/gpu_check.py ${PARITY_SCENARIOS:+--parity-scenarios "$PARITY_SCENARIOS"} --bench-args "$*"
exit "$check"
