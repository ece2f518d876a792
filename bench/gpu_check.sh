#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go, for a machine lent for minutes rather than hours.
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default OUT_DIR: gpu-check (one log and JSON per step)
#
# 1. the CUDA tests (GPU = CPU within what TF32 allows, mixed precision, training, blocks on a GPU worker);
# 2. model throughput on the GPU (bench/model_throughput.py), batch 16, bf16: eager and compiled, kernel
#    launches per forward, the head's share; its compiled graphs stay in the inductor cache for step 3;
# 3. the pipeline benchmark (bench/pipeline.py) at 2048^2 and 8192^2 with the GPU worker, two runs each;
# 4. the flow tests whose behaviour changes when a GPU is present (tiling, resume, workers, detect).
# Each step has its own time limit and log, so one failure does not hide the others' figures.
# Needs the project importable (pip install -e ".[test]") and `dsqnet` beside python3.
# STEPS="pipeline" bash bench/gpu_check.sh runs only the named steps.
# The network compiles in inductor's quickest mode here (DSQNET_COMPILE_MODE, default "default"), so that
# compiling fits the lent minutes; the tests run eager (compile=False, or DSQNET_COMPILE=0 for the flows).
set -u
OUT=${1:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 PREFECT_HOME=${PREFECT_HOME:-$(mktemp -d)}

STEPS=${STEPS:-cuda-tests throughput pipeline flow-tests}  # a subset, to repeat only some
export DSQNET_COMPILE_MODE=${DSQNET_COMPILE_MODE:-default}

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep the whole log, show its end
    local name=$1 limit=$2
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - started)) s"
    tail -n "${TAIL:-25}" "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step cuda-tests "${CUDA_TESTS_S:-240}" env DSQNET_COMPILE=0 python3 -m pytest -q -s -p no:cacheprovider \
    tests/dsqnet/test_cuda.py tests/flows/test_gpu_detect.py
step throughput "${THROUGHPUT_S:-360}" python3 bench/model_throughput.py --devices cuda --batch 16 \
    --precisions ${PRECISIONS:-bf16} --repeats 5 --warmup 2 --json "$OUT/throughput.json"
step pipeline "${PIPELINE_S:-240}" python3 bench/pipeline.py --sizes 2048 8192 --precision bf16 \
    --block-size 2048 --batch 16 --repeats 2 --json "$OUT/pipeline.json"
step flow-tests "${FLOW_TESTS_S:-200}" env DSQNET_COMPILE=0 python3 -m pytest -q -p no:cacheprovider \
    tests/flows/test_detect_resume_and_errors.py tests/flows/test_tiling.py tests/flows/test_workers.py \
    tests/flows/test_detect_flow.py
