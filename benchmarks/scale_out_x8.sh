#!/usr/bin/env bash
# Issue 15's measurements on one 8-GPU machine (device kind nvidia-h200-x8), one device call per part
# (each fits the 10-minute limit; estimates in docs/scale_out.md). From the repo root:
#   bash benchmarks/scale_out_x8.sh dig    # DiG-XL/2 256 px: 1 GPU vs DDP / FSDP2 / FSDP2 + AC on 8 GPUs, DDP / FSDP2 on 4; eager and compiled
#   bash benchmarks/scale_out_x8.sh dit    # the same for DiT-XL/2
#   bash benchmarks/scale_out_x8.sh rest   # losses 8 GPUs vs 1 (global batch 128), resume 8 -> 4 -> 1, DiG-XL/2 at 1024 px
# The paper's global batch of 256: 32 images per GPU on 8 GPUs, 64 on 4 (the one-GPU baseline runs at
# the same per-GPU batch). The 4-GPU runs use GPUs 0-3 of the same machine, so every ratio is one host's.
# JSONs and logs go to $OUT (default benchmarks/results); every part has its own time limit.
# SCALE_SMOKE=1 OUT=/tmp/x8 bash benchmarks/scale_out_x8.sh rest: the same launches on a CPU, measuring nothing.
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
# one compile cache for every process and run of the call: the compiled block is built once
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/runs/cache/inductor} TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/runs/cache/triton}
S="benchmarks/scale_out.py --out $OUT ${SCALE_SMOKE:+--smoke}"  # SCALE_SMOKE=1: rehearse on a CPU (gloo, tiny DiG)

run() {  # run LIMIT NPROC NAME ARGS...: one torchrun (NPROC = 1: plain python) under its own limit
  local limit=$1 n=$2 name=$3; shift 3
  echo "=== $name: $n GPU(s), limit ${limit}s, $(date +%T)"
  if [ "$n" = 1 ]; then
    timeout "$limit" python3 $S "$@" > "$OUT/log_scale_$name.txt" 2>&1
  else
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) timeout "$limit" \
      python3 -m torch.distributed.run --standalone --nproc_per_node="$n" $S "$@" > "$OUT/log_scale_$name.txt" 2>&1
  fi
  echo "rc $? $(date +%T)"; grep "^\[scale_out" "$OUT/log_scale_$name.txt" | tail -20
}

part=${1:?usage: scale_out_x8.sh dig|dit|rest}
nvidia-smi topo -m > "$OUT/topo_x8.txt" 2>&1
case $part in
  dig|dit)
    model=$([ "$part" = dig ] && echo DiG-XL/2 || echo DiT-XL/2); tag=${model/\//}_256
    run 380 8 "${part}_x8" --phases throughput --model "$model" --batch 32 --throughput-modes ddp fsdp fsdp+ac \
        --compile none blocks --warmup 3 --phase-seconds 10 --tag "$tag"
    run 160 4 "${part}_x4" --phases throughput --model "$model" --batch 64 --throughput-modes ddp fsdp \
        --compile none blocks --warmup 3 --phase-seconds 10 --tag "$tag";;
  rest)
    run 130 8 losses_x8 --phases losses --model DiG-XL/2 --loss-batch 16 --loss-steps 50 --phase-seconds 30 --tag losses
    ck=runs/scale_out_resume; rm -rf "$ck"
    for n in 8 4 1; do
      run 95 "$n" "resume_x$n" --phases resume --model DiG-XL/2 --resume-dir "$ck" --resume-steps 5 --resume-batch 64 --tag resume
    done
    cp "$ck/resume_record.json" "$OUT/scale_out_resume_record.json"
    run 145 8 dig1024_x8 --phases throughput --model DiG-XL/2 --resolution 1024 --batch 4 \
        --throughput-modes ddp+ac fsdp+ac fsdp ddp --warmup 2 --phase-seconds 10 --tag DiG-XL2_1024;;
  *) echo "unknown part $part (dig, dit, rest)"; exit 2;;
esac
