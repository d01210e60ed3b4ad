#!/usr/bin/env bash
# One device call: install the carried wheels, then run the named steps, each under its own time
# limit, logging to $OUT/session.log (files under $OUT come back even when a step times out).
# Usage from the repo root on the GPU machine: bash benchmarks/gpu_session.sh STEP[:SECONDS]...
# Steps: env, check, check-fla, tune, op, op-fla, model, test, scale (all GPUs: benchmarks/scale_out.py).
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if ls ../.whl/*.whl >/dev/null 2>&1; then WHL=../.whl; else WHL=.whl; fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHL/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
BENCH="import argparse, sys; sys.argv[0] = 'gladiff'; from gladiff.cli import bench; p = argparse.ArgumentParser(prog='gladiff'); s = p.add_subparsers(); bench.register(s); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
for arg in "$@"; do
  step=${arg%%:*}; limit=${arg#*:}; [ "$limit" = "$arg" ] && limit=120
  echo "=== $step (limit ${limit}s) $(date +%T)"
  mkdir -p /tmp/gs_logs; log=/tmp/gs_logs/$step.log
  case $step in
    env) timeout $limit bash -c "nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv; python3 -c \"import torch, triton, fla; print('torch', torch.__version__, 'triton', triton.__version__, 'fla', fla.__version__)\"" > $log 2>&1;;
    check-cfg) timeout $limit python3 benchmarks/check_gla_gpu.py --backends triton --out $OUT/gla_gpu_check_cfg.json > $log 2>&1
          # a configuration that fails the check falls back to tf32 operands at the same chunk size
          if ! grep -q "'triton': True" $log; then export GLADIFF_GLA_TRITON=$(echo "$GLADIFF_GLA_TRITON" | sed 's/dot=bf16/dot=tf32/'); fi
          echo "GLADIFF_GLA_TRITON=${GLADIFF_GLA_TRITON:-default}" >> $log;;
    check) timeout $limit python3 benchmarks/check_gla_gpu.py --backends chunk triton --out $OUT/gla_gpu_check.json > $log 2>&1;;
    check-fla) timeout $limit python3 benchmarks/check_gla_gpu.py --backends fla --dtypes bfloat16 --out $OUT/gla_gpu_check_fla.json > $log 2>&1;;
    tune) timeout $limit python3 benchmarks/tune_gla_triton.py --out $OUT/gla_triton_tune.json --best /tmp/best_gla > $log 2>&1
          # later steps of this call run with the fastest configuration found
          if [ -s /tmp/best_gla ]; then export GLADIFF_GLA_TRITON=$(cat /tmp/best_gla); echo "GLADIFF_GLA_TRITON=$GLADIFF_GLA_TRITON" >> $log; fi;;
    dwconv) timeout $limit python3 benchmarks/dwconv_layouts.py > $log 2>&1;;
    op) timeout $limit python3 -c "$BENCH" bench --op --gla-backends triton --out $OUT/op_bench.json > $log 2>&1;;
    op-fla) timeout $limit python3 -c "$BENCH" bench --op --gla-backends fla --dit-attn flash --out $OUT/op_bench_fla.json > $log 2>&1;;
    model) timeout $limit python3 -c "$BENCH" bench ${MODEL_ARGS:-} --out $OUT/model_bench.json > $log 2>&1;;
    model2) timeout $limit python3 -c "$BENCH" bench ${MODEL2_ARGS:-} --out $OUT/model_bench2.json > $log 2>&1;;
    profile) timeout $limit bash -c "python3 benchmarks/profile_step.py --model DiG-XL/2 --res 256 --batch 32 --out $OUT/profile_dig_xl_256.json; python3 benchmarks/profile_step.py --model DiT-XL/2 --res 256 --batch 32 --attn flash --top 8; python3 benchmarks/profile_step.py --model DiG-S/2 --res 2048 --batch 1 --out $OUT/profile_dig_s_2048.json; python3 benchmarks/profile_step.py --model DiT-S/2 --res 2048 --batch 1 --attn cudnn --top 8" > $log 2>&1;;
    test) timeout $limit python3 -m pytest -q tests/ops > $log 2>&1;;
    scale) timeout $limit python3 -m torch.distributed.run --standalone --nproc_per_node=$(nvidia-smi -L | wc -l) benchmarks/scale_out.py --out $OUT ${SCALE_ARGS:-} > $log 2>&1;;
    *) echo "unknown step $step" > $log;;
  esac
  echo "rc $? $(date +%T)"; grep -v "Warning\|warn(" $log | tail -${TAIL:-25}
  { echo "=== $step"; cat $log; } >> $OUT/session.log
done
