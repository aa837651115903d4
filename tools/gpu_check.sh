#!/usr/bin/env bash
# Every check that needs a GPU, as one prepared run (a lent GPU machine, or your own card); < 8 min on an H100/H200:
#   data          demo photos (0.3-2 MP JPEGs) for the steps below;
#   bf16_step     first of all: one real bf16 step through engine/train.py under the DeepSpeed launcher;
#   pytest_gpu    the kernel tests compiled on the card (tests/kernels/conftest.py runs them on sm_80+ instead of
#                 the interpreter) and every other test marked gpu;
#   bench_augment the fused augmentation against the bytes-moved floor and a ResNet-50 bf16 step (tools/bench_augment.py);
#   bench_decode  DALI decode images/s (mixed; hardware decoder off / on) against Pillow per core, same photos;
#   cache_dali    the flash decode cache built with GPU decode (cache.decoder=dali), figures in JSON;
#   profile       the profiler on the ResNet-50 224 px bf16 channels_last recipe: cache backend (end-to-end /
#                 model-only) and the same recipe on the dali backend from the JPEGs;
#   two_rank      a 2-rank bf16 run under the launcher, if the machine has 2 GPUs.
# Each step runs on its own (a failure does not stop the others) with a time limit, logs to $OUT/<step>.log, writes
# its figures as JSON under $OUT, and prints one line "== PASS|FAIL|SKIP <step> ..."; $OUT/steps.json collects them.
# Exits non-zero if a step failed.
#
#   bash tools/gpu_check.sh             # on the card; PYTHON=python3 (its deepspeed beside it), BATCH=256, OUT=./gpu_check_out
#   SMOKE=1 bash tools/gpu_check.sh     # every step tiny, on CPU: checks that each one starts and runs (a few minutes)
#   DRY_RUN=1 bash tools/gpu_check.sh   # print each step's command, run nothing
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu_check_out}
py=${PYTHON:-python3}
deepspeed=${DEEPSPEED:-$(dirname "$(command -v "$py")")/deepspeed}
smoke=${SMOKE:-0}
dry=${DRY_RUN:-0}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0
: > "$out/steps.jsonl"

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $out/NAME.log, one PASS/FAIL line, never stop
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    if [ "$dry" = 1 ]; then
        echo "== DRY $name"
        return 0
    fi
    local t0=$SECONDS rc
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    tail -n 15 "$out/$name.log"
    local verdict=PASS
    [ "$rc" -eq 0 ] || { verdict=FAIL; status=1; }
    [ "$rc" -eq 124 ] && echo "== $name ran past its ${limit}s limit"
    echo "== $verdict $name (exit $rc, $((SECONDS - t0))s, log $out/$name.log)"
    printf '{"step": "%s", "verdict": "%s", "exit": %d, "seconds": %d}\n' "$name" "$verdict" "$rc" $((SECONDS - t0)) >> "$out/steps.jsonl"
}

skip() {  # skip NAME REASON
    echo "== SKIP $1 ($2)"
    printf '{"step": "%s", "verdict": "SKIP", "reason": "%s"}\n' "$1" "$2" >> "$out/steps.jsonl"
}

port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

data=$out/data
if [ "$smoke" = 1 ]; then  # CPU, tiny: same commands, sizes a 2-core machine runs in minutes
    photos=(--train 16 --val 8 --test 8)
    tiny=(--model.backbone=test_resnet --data.image_size=32 --cache.stored_size=40 --loader.batch_size=4
          --loader.num_workers=0 --model.text_max_length=16)
    r50=(--data.image_size=32 --cache.stored_size=40 --loader.batch_size=4 --loader.num_workers=0 --model.text_max_length=16
         --model.backbone=test_resnet)  # ResNet-50 in bf16 on 2 shared cores: tens of seconds a step
    pytest_gpu=(-m gpu tests)
    augment=(--device cpu --batch 2 --in-size 20 --out-size 12 --repeats 1 --model resnet18 --copy-mib 1)
    export TRITON_INTERPRET=1
    decode=(--limit 8 --device cpu)
    profile=(--steps 1 --repeats 1 --warmup 0)
    ngpu=0
else
    photos=(--train 256 --val 64 --test 64)
    tiny=()
    r50=()
    pytest_gpu=(tests/kernels)
    augment=(--device cuda --batch "${BATCH:-256}")
    decode=(--limit 128 --device cuda)
    profile=(--steps 30)
    ngpu=$("$py" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
fi
train=(engine/train.py --config configs/demo.yaml "--data.manifest=$data/manifest.csv" "--cache.dir=$out/cache_demo"
       "--run.output_dir=$out/runs" --train.precision=bf16 --train.epochs=1 --eval.test=false "${tiny[@]}")
r50=(--config configs/demo_resnet50_224.yaml "--data.manifest=$data/manifest.csv" "--cache.dir=$out/cache_r50"
     --train.precision=bf16 --train.channels_last=true "${r50[@]}")

if [ "$smoke" != 1 ]; then
    step device 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv;
      $py -c 'import torch, triton; print(\"torch\", torch.__version__, \"triton\", triton.__version__,
              torch.cuda.get_device_name(), \"sm_%d%d\" % torch.cuda.get_device_capability(), torch.cuda.get_arch_list())'"
fi
step data 300 "$py" tools/make_demo_data.py "$data" "${photos[@]}"
# Pillow builds the demo cache here, so a DALI problem shows in cache_dali, not in the first training step.
step bf16_step 420 bash -c "$py tools/build_cache.py --config configs/demo.yaml --data.manifest=$data/manifest.csv \
    --cache.dir=$out/cache_demo --cache.decoder=pil --no-progress ${tiny[*]} &&
  $deepspeed --num_gpus 1 --master_port $(port) ${train[*]} --run.name=bf16_step --train.max_steps_per_epoch=1 &&
  cp $out/runs/bf16_step/summary.json $out/bf16_step.json"
if [ "$smoke" = 1 ]; then
    step pytest_gpu 600 "$py" -m pytest -q -rs -p no:cacheprovider "${pytest_gpu[@]}"  # collected, skipped on CPU
else
    step pytest_gpu 600 bash -c "$py -m pytest -q -rs -p no:cacheprovider tests/kernels &&
      $py -m pytest -q -rs -p no:cacheprovider -m gpu tests --ignore=tests/kernels"
fi
step bench_augment 300 "$py" tools/bench_augment.py --skip-host "${augment[@]}" --json "$out/bench_augment.json"
step bench_decode 240 "$py" tools/bench_decode.py --manifest "$data/manifest.csv" --size 256 "${decode[@]}" \
    --json "$out/bench_decode.json"
step cache_dali 240 "$py" tools/build_cache.py "${r50[@]}" --cache.decoder=dali --no-progress --json "$out/cache_dali.json"
step profile 420 bash -c "$py tools/build_cache.py ${r50[*]} --no-progress &&
  $py tools/profile_throughput.py ${r50[*]} ${profile[*]} --json $out/profile.json --png $out/profile.png"
if [ "$ngpu" -ge 2 ] || [ "$smoke" = 1 ]; then
    step two_rank 420 bash -c "$deepspeed --num_gpus 2 --master_port $(port) ${train[*]} --run.name=two_rank \
      --train.max_steps_per_epoch=2 && cp $out/runs/two_rank/summary.json $out/two_rank.json"
else
    skip two_rank "$ngpu GPU(s)"
fi

"$py" -c "import json, sys; rows = [json.loads(l) for l in open(sys.argv[1])]; json.dump(rows, open(sys.argv[2], 'w'), indent=1)" \
    "$out/steps.jsonl" "$out/steps.json" 2>/dev/null
echo "== gpu_check: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED); logs and JSON in $out"
exit $status
