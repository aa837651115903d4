#!/usr/bin/env bash
# Every check that needs a GPU, as one prepared run (a lent GPU machine, or your own card):
#   1. the card, driver and library versions;
#   2. the kernel tests compiled on the card (tests/kernels/conftest.py runs them on sm_80+ instead of the
#      interpreter): Triton vs reference at full size, the reference on CUDA vs CPU, dispatch;
#   3. tools/bench_augment.py on the card: the fused kernel against the bytes-moved floor, and the whole
#      augmentation against a ResNet-50 bf16 training step (docs/benchmarks.md, "Augmentation on a GPU").
# Logs and JSON go to $OUT (default ./gpu_check_out). Exits non-zero if a step failed; later steps still run.
#
#   bash tools/gpu_check.sh                 # PYTHON=python3 BATCH=256 by default
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu_check_out}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, log to $out/NAME.log, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name failed (exit $rc)"; status=1; }
}

step device 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv;
  $py -c 'import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__,
          torch.cuda.get_device_name(), \"sm_%d%d\" % torch.cuda.get_device_capability())'"
step pytest_kernels 300 "$py" -m pytest -q -rs -p no:cacheprovider tests/kernels
step bench_augment 300 "$py" tools/bench_augment.py --skip-host --device cuda --batch "${BATCH:-256}" --json "$out/bench_augment.json"
echo "== gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED); logs in $out"
exit $status
