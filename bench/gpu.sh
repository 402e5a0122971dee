#!/usr/bin/env bash
# The benchmark suite on one CUDA GPU, in under ~8 minutes: bash bench/gpu.sh [OUT.json]
#   - fp16 and amp text towers (ViT-B/16 shapes), cached vs uncached evaluation, per-trainer steps and throughput;
#   - the OT head vs the reference-style loop at C = 100 and C = 1,000 (bench/ot_head.py --device cuda);
#   - one ALIGN training step shaped like ImageNet (B 4, C 1,000, M = N = 4) on a ViT-B/16-shaped random CLIP.
# Writes one JSON report (default bench/results/gpu-<host>-<time>.json) and prints every ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-bench/results/gpu-$(hostname)-$(date +%Y%m%d-%H%M%S).json}
mkdir -p "$(dirname "$OUT")"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device visible')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m bench --device cuda --scale full --precision fp16 amp --repeats 5 --out "$OUT"
for C in 100 1000; do
  "$PY" bench/ot_head.py --device cuda --classes "$C" --skip-mem | tee -a "${OUT%.json}-ot_head.txt"
done
echo "report: $OUT (OT head at C=100 and 1000: ${OUT%.json}-ot_head.txt)"
