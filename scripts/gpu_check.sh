#!/usr/bin/env bash
# Everything that needs a GPU, in four stages of at most 4 minutes each on one H100, run as
# separate device calls, most important first (docs/PERFORMANCE.md, "GPU check in stages"):
#   --stage 1  toto-compiled check --quick --device cuda; benchmark float32 S1-S3
#   --stage 2  scripts/gpu_check.py (parity, bf16 accuracy, compile health under CUDA graphs);
#              benchmark bfloat16 S1-S3
#   --stage 3  S4 in bfloat16 (ours compiled, 256 series per batch); upstream compiled on S1;
#              S4's upstream-eager baseline
#   --stage 4  Toto 2.0: benchmark T3 (313m size) against upstream toto-2, float32 (upstream eager
#              and compiled, ours eager and compiled) and bfloat16 (ours)
#   --stage 5  live streams: an update against a fresh forecast at 512, 2,048 and 4,096 steps (1 and
#              64 series), and 10,000 streams updated 2,500 at a time, float32
# --dry: the same stage on the CPU at tiny sizes, time limits x5, to rehearse the plumbing without a GPU.
# Each sub-step runs under `timeout` (SIGINT first: the benchmark prints its partial table),
# its limit in the table below (LIMIT_<NAME> overrides); a failing or cut sub-step does not
# stop the next. Every line goes to stdout and, as it comes, to $OUT/stage<N>.log; each
# sub-step's result line to $OUT/stage<N>.txt when it ends; benchmark JSON to $OUT/*.json.
# $OUT defaults to ./gpu_check_out. Extra arguments go to every benchmark run, after the
# defaults (so they win), except in the S4 runs, where the stage's own options come last.
# The oracle's extra dependencies travel as wheels in .whl/, the oracle itself in .oracle/.
# Never pipe this script's output through a block-buffering filter (grep without
# --line-buffered, sort): a run killed at its limit then shows nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RESULTS=${OUT:-$PWD/gpu_check_out}

usage() {
    echo "usage: bash scripts/gpu_check.sh --stage 1|2|3|4|5|all [--dry] [BENCH_ARGS...]" >&2
    exit 2
}
stage="" dry=0
while [ $# -gt 0 ]; do
    case $1 in
        --stage) [ $# -ge 2 ] || usage; stage=$2; shift 2 ;;
        --stage=*) stage=${1#--stage=}; shift ;;
        --dry) dry=1; shift ;;
        *) break ;;
    esac
done
case $stage in 1 | 2 | 3 | 4 | 5 | all) ;; *) echo "gpu_check.sh: error: --stage must be 1, 2, 3, 4, 5 or all, got '${stage}'" >&2; usage ;; esac
mkdir -p "$RESULTS" || exit 2
failed=()

# Seconds per sub-step on one H100; each stage's limits add up to 200 s, leaving 40 s of the
# 4 minutes for start-up (wheels, imports) and the kill grace of `timeout`.
declare -A LIMIT=(
    [check]=${LIMIT_CHECK:-90} [bench_f32]=${LIMIT_BENCH:-110}
    [parity]=${LIMIT_PARITY:-125} [bench_bf16]=${LIMIT_BENCH_BF16:-75}
    [s4]=${LIMIT_S4:-90} [upstream]=${LIMIT_UPSTREAM:-45} [s4_baseline]=${LIMIT_S4_BASELINE:-65}
    [toto2_f32]=${LIMIT_TOTO2:-120} [toto2_bf16]=${LIMIT_TOTO2_BF16:-80}
    [streams]=${LIMIT_STREAMS:-200}
)

say() {  # a line to stdout and the stage's log
    echo "$*" | tee -a "$LOG"
}

phase() {  # phase NAME LIMIT_S COMMAND...: run it bounded, streamed to the log; record its result line
    local name=$1 limit=$2 start=$SECONDS rc=0 verdict
    shift 2
    say ""
    say "=== $(date +%T) $name (limit ${limit} s)"
    # tee copies each line as it comes (PYTHONUNBUFFERED=1): a cut run leaves its partial output.
    timeout --signal=INT --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in 0) verdict=passed ;; 124) verdict="TIMED OUT" ;; *) verdict=FAILED ;; esac
    say "=== $(date +%T) $name: exit $rc after $((SECONDS - start)) s ($verdict)"
    echo "| $stage_now | $name | $verdict | exit $rc | $((SECONDS - start)) s of ${limit} s |" >>"$SUMMARY"
    [ "$rc" = 0 ] || failed+=("stage $stage_now: $name (exit $rc)")
}

bench() {  # bench NAME LIMIT_S ARGS...: one benchmark run, its JSON under $RESULTS
    local name=$1 limit=$2
    shift 2
    phase "$name" "$limit" $PY scripts/bench.py --device "$DEVICE" --repeats "$REPEATS" \
        --json "$RESULTS/${name// /_}.json" "${SIZE[@]}" "$@"
}

if [ "$dry" = 1 ]; then
    DEVICE=cpu REPEATS=1 SCALE=5  # compiling on a CPU is slow
    for step in "${!LIMIT[@]}"; do LIMIT[$step]=$((LIMIT[$step] * SCALE)); done
    TINY=$RESULTS/tiny_checkpoint
    $PY - "$TINY" <<'EOF' || exit 2
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from checkpoints import TINY_CONFIG, write_checkpoint
folder = Path(sys.argv[1])
if not (folder / "config.json").is_file():
    write_checkpoint(folder, TINY_CONFIG, seed=0)
(folder.parent / "tiny_config.json").write_text(json.dumps(TINY_CONFIG))
EOF
    SIZE=(--config "$RESULTS/tiny_config.json" --scenarios S1)
    S4_SIZE=(--s4-series 4 --s4-max-context 100 --s4-batch-size 4)
    CHECK=(--model "$TINY")
    PARITY=(--tiny)
    TOTO2=(--toto2-workloads T1)
    STREAMS=(--stream-contexts 64,128 --stream-rows 1,2 --stream-series 8 --stream-batch 4 --stream-throughput-context 64)
else
    DEVICE=cuda REPEATS=3 SCALE=1 SIZE=() CHECK=() PARITY=() TOTO2=(--toto2-workloads T3)
    STREAMS=(--stream-series 10000 --stream-batch 2500)
    S4_SIZE=(--s4-batch-size 256)  # all 256 series in one batch: one prefill graph to compile
fi
torch_line=$($PY -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}')")
if [ "$dry" = 0 ] && [[ $torch_line != *"available True" ]]; then
    echo "gpu_check.sh: error: CUDA is not available ($torch_line); rehearse on the CPU with --dry" >&2
    exit 2
fi

if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || failed+=("wheel install")
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

stage1() {
    phase "check --quick" "${LIMIT[check]}" $PY -m toto.cli check --quick --device "$DEVICE" "${CHECK[@]}"
    bench "bench float32" "${LIMIT[bench_f32]}" --dtype float32 --runners upstream-eager,ours-eager,ours-compiled \
        --runner-timeout $((45 * SCALE)) "$@"
}

stage2() {
    phase "parity, bf16 accuracy, compile health" "${LIMIT[parity]}" $PY scripts/gpu_check.py --device "$DEVICE" \
        "${PARITY[@]}" ${PARITY_SCENARIOS:+--parity-scenarios "$PARITY_SCENARIOS"} \
        ${COMPILED_SCENARIOS:+--compiled-scenarios "$COMPILED_SCENARIOS"}
    bench "bench bfloat16" "${LIMIT[bench_bf16]}" --dtype bfloat16 --runners upstream-eager,ours-eager,ours-compiled \
        --runner-timeout $((30 * SCALE)) "$@"
}

stage3() {
    # S4: the first call compiles (about 30 s for a full-size graph) and is not timed; two timed calls.
    bench "bench S4 bfloat16" "${LIMIT[s4]}" "$@" --repeats 2 --dtype bfloat16 --scenarios S4 \
        --runners ours-compiled "${S4_SIZE[@]}" --runner-timeout $((75 * SCALE))
    # One scenario and 25 s: enough to see whether upstream works under CUDA graphs at all.
    bench "bench upstream compiled" "${LIMIT[upstream]}" --dtype float32 --scenarios S1 \
        --runners upstream-eager,upstream-compiled --runner-timeout $((30 * SCALE)) "$@"
    bench "bench S4 upstream baseline" "${LIMIT[s4_baseline]}" "$@" --repeats 1 --dtype float32 --scenarios S4 \
        --runners upstream-eager "${S4_SIZE[@]}" --runner-timeout $((55 * SCALE))
}

stage4() {
    bench "bench toto2 float32" "${LIMIT[toto2_f32]}" --family toto2 "${TOTO2[@]}" --dtype float32 \
        --toto2-runners upstream-eager,upstream-compiled,ours-eager,ours-compiled "$@"
    bench "bench toto2 bfloat16" "${LIMIT[toto2_bf16]}" --family toto2 "${TOTO2[@]}" --dtype bfloat16 \
        --toto2-runners upstream-eager,ours-compiled "$@"
}

stage5() {
    bench "bench streams" "${LIMIT[streams]}" --streams --dtype float32 "${STREAMS[@]}" "$@"
}

commit=$(git rev-parse --short HEAD 2>/dev/null || echo "${GIT_COMMIT:-unknown (no .git in this copy)}")
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit + uncommitted changes"
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "none")
stages=$stage
[ "$stage" = all ] && stages="1 2 3 4 5"
for stage_now in $stages; do
    LOG=$RESULTS/stage$stage_now.log SUMMARY=$RESULTS/stage$stage_now.txt
    : >"$LOG"
    {
        echo "stage $stage_now$([ "$dry" = 1 ] && echo ' (dry run: CPU, tiny sizes)'); commit: $commit"
        echo "date: $(date -u); gpu: $gpu"
        echo "| stage | step | result | exit | time |"
        echo "|---|---|---|---|---|"
    } >"$SUMMARY"
    say "stage $stage_now; commit: $commit; date: $(date -u); gpu: $gpu"
    say "$torch_line"
    "stage$stage_now" "$@"
done
echo
echo "=== $(date +%T) done in $SECONDS s; results in $RESULTS"
if [ "${#failed[@]}" -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all steps passed"
