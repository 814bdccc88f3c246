#!/usr/bin/env bash
# The recipe's training step and the soft-label cache build's source passes, in images/s on a GPU against this
# machine's CPU (one thread), in one run of at most about 8 minutes:
#   bash benchmarks/gpu.sh            # writes benchmarks/results/gpu-throughput.{md,json}
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
mkdir -p "$out"
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  timeout 300 python benchmarks/step_throughput.py --device cuda --seconds 10 --json "$out/gpu-throughput.json" \
    | tee "$out/gpu-throughput.md"
else
  echo "no CUDA device: measuring the CPU only" | tee "$out/gpu-throughput.md"
fi
OMP_NUM_THREADS=1 timeout 180 python benchmarks/step_throughput.py --device cpu --seconds 5 \
  --json "$out/cpu-throughput.json" | tee -a "$out/gpu-throughput.md"
