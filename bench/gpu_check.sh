#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go, for a machine lent for minutes rather than hours.
#
#   bash bench/build_device_wheels.sh            # here, once: .device-wheels/wheels.tar.xz (~42 MiB)
#   bash bench/gpu_check.sh [OUT_DIR]            # there; default OUT_DIR: gpu-check (a log per step)
#
# With the device tool: command `bash bench/gpu_check.sh $OUT`, carry [".device-wheels"], timeout_s
# 600. What comes back from $OUT is at most 8 files: the steps write 8.
#
# 0. install: the carried wheels (WHEELS, default .device-wheels/wheels.tar.xz) into SITE with
#    `pip install --no-index --no-deps`, that folder and this checkout first on PYTHONPATH, and a
#    `dsqnet` command on PATH; skipped when WHEELS is missing (the project already installed);
# 1. cuda-tests: the CUDA tests (GPU = CPU within what TF32 allows, mixed precision, training, blocks on a GPU worker);
# 2. throughput: the network on the GPU (bench/model_throughput.py), batch 16, bf16: eager and compiled,
#    kernel launches per forward, the head's share; its compiled graphs stay in the inductor cache for step 3;
# 3. pipeline: bench/pipeline.py at 2048^2 and 8192^2 with the GPU worker, two runs each;
# 4. pipeline-cpu: the pipeline's own CPU seconds per Mpx on this machine's cores (stand-in network, 8192^2);
# 5. flow-tests: the flow tests whose behaviour changes when a GPU is present (tiling, resume, workers, detect).
# Each step has its own time limit and log, so one failure does not hide the others' figures, and
# all of them share BUDGET_S (default 540 s, inside the tool's 600 s per call): a step gets what
# is left of it, and a step with under 20 s left is skipped and says so. STEPS="pipeline" runs
# only the named steps. The network compiles in inductor's quickest mode here (DSQNET_COMPILE_MODE,
# default "default"), so that compiling fits the lent minutes; the tests run eager (DSQNET_COMPILE=0).
set -u
OUT=${1:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 PREFECT_HOME=${PREFECT_HOME:-$(mktemp -d)}

STEPS=${STEPS:-cuda-tests throughput pipeline pipeline-cpu flow-tests}  # a subset, to repeat only some
BUDGET_S=${BUDGET_S:-540}
WHEELS=${WHEELS:-.device-wheels/wheels.tar.xz}
SITE=${SITE:-/tmp/dsqnet-site}
export DSQNET_COMPILE_MODE=${DSQNET_COMPILE_MODE:-default}

# step NAME SECONDS COMMAND...: run with a limit (at most what is left of the budget), keep the log, show its end
step() {
    local name=$1 limit=$2
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    local left=$((BUDGET_S - SECONDS))
    if ((left < 20)); then
        echo "== $name: skipped, ${left} s of BUDGET_S=${BUDGET_S} left (STEPS=\"$name\" runs it alone)"
        return 0
    fi
    ((limit > left)) && limit=$left
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - started)) s (limit $limit s)"
    tail -n "${TAIL:-25}" "$OUT/$name.log"
}

install_wheels() {  # the carried wheels, once per machine (SITE is kept while the machine is)
    if [[ ! -f "$WHEELS" ]]; then
        echo "== install: no $WHEELS, using the installed packages (bash bench/build_device_wheels.sh makes it)"
        return 0
    fi
    local started=$SECONDS unpacked=/tmp/dsqnet-wheels
    if [[ ! -f "$SITE/.installed" ]]; then
        rm -rf "$unpacked" && mkdir -p "$unpacked" &&
            python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
                "$WHEELS" "$unpacked" &&
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
                --root-user-action=ignore --find-links "$unpacked" --target "$SITE" "$unpacked"/*.whl &&
            touch "$SITE/.installed" || { echo "== install: FAILED"; exit 1; }
        rm -rf "$unpacked"
    fi
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
    printf '#!/bin/sh\nexec python3 -m flows.cli "$@"\n' >"$SITE/bin/dsqnet" && chmod +x "$SITE/bin/dsqnet"
    echo "== install: $(ls "$SITE" | grep -c 'dist-info$') packages in $SITE after $((SECONDS - started)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
install_wheels
python3 -c "import torch, prefect, rasterio; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name(), '| prefect', prefect.__version__, '| rasterio', rasterio.__version__)"

step cuda-tests "${CUDA_TESTS_S:-150}" env DSQNET_COMPILE=0 python3 -m pytest -q -s -p no:cacheprovider \
    tests/dsqnet/test_cuda.py tests/flows/test_gpu_detect.py
step throughput "${THROUGHPUT_S:-150}" python3 bench/model_throughput.py --devices cuda --batch 16 \
    --precisions ${PRECISIONS:-bf16} --repeats 5 --warmup 2 --json "$OUT/throughput.json"
step pipeline "${PIPELINE_S:-200}" python3 bench/pipeline.py --sizes 2048 8192 --precision bf16 \
    --block-size 2048 --batch 16 --repeats 2 --json "$OUT/pipeline.json"
step pipeline-cpu "${PIPELINE_CPU_S:-80}" python3 bench/pipeline.py --sizes 8192 --batch 16 --stand-in-ms 8 \
    --json "$OUT/pipeline-cpu.json"
step flow-tests "${FLOW_TESTS_S:-150}" env DSQNET_COMPILE=0 python3 -m pytest -q -p no:cacheprovider \
    tests/flows/test_detect_resume_and_errors.py tests/flows/test_tiling.py tests/flows/test_workers.py \
    tests/flows/test_detect_flow.py
echo "== done after $SECONDS s"
