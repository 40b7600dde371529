#!/usr/bin/env bash
# The engine and landscape benchmarks on one CUDA device, within a time budget (an H100/H200: ~10 min).
#
#   benchmarks/gpu.sh [OUT] [BUDGET_SECONDS]        (defaults: benchmarks/results 540)
#   SMOKE=1 benchmarks/gpu.sh /tmp/bench 120        (the same path at tiny sizes on the CPU)
#
# Runs, each with the rest of the budget: bench_engine.py --setting gpu-resnet18 (cold λ_max, trace
# and products against PyHessian, strict fp32), then bench_landscape.py --setting gpu (the 41×41
# ResNet-18 slice), then bench_large.py on GPT-2 medium/large (float32) and a 1.1 B Llama-style model
# (bf16 weights), each with the cost of a Lanczos step with its basis in pinned host memory against the
# basis on the device. Writes their tables under OUT and OUT/gpu-device.txt (the GPU, driver, torch and
# CUDA versions). The trajectory benchmark (bench_trajectory.py) runs on the CPU only for now.
set -euo pipefail
OUT=${1:-benchmarks/results}
BUDGET=${2:-540}
DATA=${DATA:-../shared/data/cifar10_train16k.npz}
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
{
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
} > "$OUT/gpu-device.txt"
cat "$OUT/gpu-device.txt"
if [ -n "${SMOKE:-}" ]; then
  engine=(--setting cpu-cnn --smoke); landscape=(--setting cpu --smoke)
else
  engine=(--setting gpu-resnet18); landscape=(--setting gpu)
fi
run() {  # NAME CMD...: run CMD with the budget left; a timeout is reported, not fatal
  local name=$1; shift
  local t; t=$(left)
  if [ "$t" -le 10 ]; then echo "$name: budget spent, not run" >&2; return 0; fi
  echo "== $name ($t s left)"
  timeout "$t" "$@" || echo "$name: stopped (exit $?)" >&2
}
data=(); [ -f "$DATA" ] && data=(--data "$DATA")  # without the file: seeded synthetic images
run engine python benchmarks/bench_engine.py "${engine[@]}" "${data[@]}" --out "$OUT"
run landscape python benchmarks/bench_landscape.py "${landscape[@]}" "${data[@]}" --out "$OUT"
# large models (bench_large.py): GPT-2 medium and large in float32, a 1.1 B Llama-style model with bf16 weights
if [ -n "${SMOKE:-}" ]; then
  small=(--seqs 1 --seq-len 16 --density-steps 5 --trace-matvecs 2 --basis-steps 3 --skip pyhessian)
  run large-tiny python benchmarks/bench_large.py --config tiny "${small[@]}" --out "$OUT/large_smoke-tiny"
  run large-llama-tiny python benchmarks/bench_large.py --config llama-tiny --weights bf16 "${small[@]}" \
    --out "$OUT/large_smoke-llama-tiny"
else
  for config in gpt2-medium gpt2-large; do
    run "large-$config" python benchmarks/bench_large.py --config "$config" --device cuda --seqs 8 --seq-len 512 \
      --out "$OUT/large_gpu-$config"
  done
  run large-llama-1b python benchmarks/bench_large.py --config llama-1b --weights bf16 --device cuda --seqs 4 \
    --seq-len 512 --skip pyhessian --out "$OUT/large_gpu-llama-1b"
fi
echo "done in $(( $(date +%s) - start )) s; tables in $OUT"
