#!/usr/bin/env bash
# Runs the multi-label mosaic or the moving-CIFAR video benchmark arms one after the other.
# Usage (from the repo root): bash benchmarks/run_multilabel_video.sh mosaic|video
set -euo pipefail
# One thread per run: on a shared 2-core machine, 2 threads per process were 2-6x slower (oversubscription).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SSKT=${SSKT:-/work/venv/bin/sskt}
case "${1:-}" in
  mosaic)
    for seed in 0 1; do
      $SSKT train benchmarks/multilabel_mosaic.yaml "method={name: scratch}" seed=$seed \
        out_dir=runs/bench/mosaic/scratch-s$seed name=mosaic-r20-scratch
      $SSKT train benchmarks/multilabel_mosaic.yaml seed=$seed out_dir=runs/bench/mosaic/sskt-s$seed
    done ;;
  video)
    $SSKT train benchmarks/video_moving_cifar.yaml "method={name: scratch}" out_dir=runs/bench/moving-cifar/scratch-s0 \
      name=moving-cifar-r3d18-scratch
    $SSKT train benchmarks/video_moving_cifar.yaml out_dir=runs/bench/moving-cifar/sskt-centre-s0
    $SSKT train benchmarks/video_moving_cifar.yaml method.sources.0.frames=mean4 \
      out_dir=runs/bench/moving-cifar/sskt-mean4-s0 name=moving-cifar-r3d18-sskt-mean4 ;;
  *) echo "usage: $0 mosaic|video" >&2; exit 2 ;;
esac
