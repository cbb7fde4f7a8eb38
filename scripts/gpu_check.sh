#!/usr/bin/env bash
# Everything that needs a GPU, in one device call of at most 8 minutes on an H100/H200.
# Phases, most important first, each capped (seconds; the caps add up to 8 minutes):
#   1. toto-compiled check --quick --device cuda                                         95
#   2. scripts/gpu_check.py: parity on CUDA (TF32 off), bf16 accuracy, compile health
#      with compile_prefill=True under CUDA graphs                                       125
#   3. benchmark, float32: ours eager and compiled, upstream eager                       100
#   4. benchmark, bfloat16: the same runners, ours in bf16 (upstream stays float32)       70
#   5. benchmark S4 (256 series per call), bfloat16: ours compiled only, series/s;
#      all 256 series in one batch, so one prefill graph to compile (target 2,000/s)      50
#   6. benchmark, float32, S1: upstream compiled (reduce-overhead) and upstream eager     40
# Memory: each benchmark row's "peak MiB" (torch.cuda.max_memory_allocated, reset per runner).
# S4's upstream baseline and its --s4-memory check (two more processes, each compiling) are
# left out for time; run them on their own, e.g. `python scripts/bench.py --device cuda
# --scenarios S4 --runners upstream-eager,ours-compiled --dtype bfloat16 --s4-batch-size 256`.
# ours-compiled-prefill is left out: on CUDA ours-compiled already compiles prefill (the
# default). Upstream compiled runs alone, last: it may be slow, and a CUDA error there would
# spoil the process it runs in. A first compile of a full-size graph takes ~30 s on a GPU;
# each new shape or dtype is a new graph, hence the narrow defaults.
#
# Each phase runs under `timeout` (SIGINT first: Python shows where it was, the benchmark
# prints its partial table) and prints its start, end and duration. A failing or cut phase
# does not stop the later ones; the script exits 1 at the end if any failed.
#
# Extra arguments go to every benchmark run, after the defaults (so they win), e.g.
# --scenarios S2,S3; in the S4 phase they come first, so its own options (scenario, runner,
# dtype, repeats, batch size) stay.
# Environment: PARITY_SCENARIOS, COMPILED_SCENARIOS (gpu_check.py's lists), LIMIT_CHECK,
# LIMIT_PARITY, LIMIT_BENCH, LIMIT_BENCH_BF16, LIMIT_S4, LIMIT_UPSTREAM (seconds),
# GIT_COMMIT (printed where the copy has no .git). Benchmark JSON goes to $OUT (or /tmp).
# The oracle's extra dependencies travel as wheels in .whl/ (see docs/PERFORMANCE.md); the
# oracle itself in .oracle/ (python scripts/install_oracle.py). Never pipe this script's
# output through grep/tee/sort: a run killed at its limit then shows nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RESULTS=${OUT:-/tmp}
failed=()

phase() {  # phase NAME LIMIT_S COMMAND...: run it timed and bounded; record a failure, never stop
    local name=$1 limit=$2 start=$SECONDS rc=0
    shift 2
    echo
    echo "=== $(date +%T) $name (limit ${limit} s)"
    timeout --signal=INT --kill-after=5 "$limit" "$@" || rc=$?
    echo "=== $(date +%T) $name: exit $rc after $((SECONDS - start)) s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
    [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
}

commit=$(git rev-parse --short HEAD 2>/dev/null || echo "${GIT_COMMIT:-unknown (no .git in this copy)}")
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit + uncommitted changes"
echo "commit: $commit"
echo "date: $(date -u)"
echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"

if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || failed+=("wheel install")
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}')"

bench() {  # bench NAME LIMIT_S ARGS...: one benchmark run on CUDA, its JSON under $RESULTS
    local name=$1 limit=$2
    shift 2
    phase "$name" "$limit" $PY scripts/bench.py --device cuda --repeats 3 --json "$RESULTS/${name// /_}.json" "$@"
}

phase "check --quick" "${LIMIT_CHECK:-95}" $PY -m toto.cli check --quick --device cuda
phase "parity, bf16 accuracy, compile health" "${LIMIT_PARITY:-125}" $PY scripts/gpu_check.py \
    ${PARITY_SCENARIOS:+--parity-scenarios "$PARITY_SCENARIOS"} \
    ${COMPILED_SCENARIOS:+--compiled-scenarios "$COMPILED_SCENARIOS"}
ours=upstream-eager,ours-eager,ours-compiled
bench "bench float32" "${LIMIT_BENCH:-100}" --dtype float32 --runners "$ours" "$@"
bench "bench bfloat16" "${LIMIT_BENCH_BF16:-70}" --dtype bfloat16 --runners "$ours" "$@"
# S4: the first call compiles (about 30 s for a full-size graph) and is not timed; two timed calls.
bench "bench S4 bfloat16" "${LIMIT_S4:-50}" "$@" --repeats 2 --dtype bfloat16 --scenarios S4 \
    --runners ours-compiled --s4-batch-size 256
# One scenario and 25 s: enough to see whether it works under CUDA graphs at all.
bench "bench upstream compiled" "${LIMIT_UPSTREAM:-40}" --dtype float32 --scenarios S1 \
    --runners upstream-eager,upstream-compiled --runner-timeout 25 "$@"
echo
echo "=== $(date +%T) done in $SECONDS s"
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all phases passed"
