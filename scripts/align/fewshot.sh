#!/bin/bash
# ALIGN few-shot (ViT-B/16), shots 1/2/4/8/16 x seeds 1-3: bash scripts/align/fewshot.sh DATASET [KEY VALUE ...]
# Run from the repository root; DATA, OUT and TAG (output sub-folder, e.g. "reference" when passing
# TRAINER.ALIGN.COMPAT reference TRAINER.ALIGN.STOP reference) may be set in the environment.
# Epochs follow the reference train.py: 1 shot 30, 2/4 shots 50, 8/16 shots 80, ImageNet 20.
set -e
DATA=${DATA:-/path/to/datasets}; OUT=${OUT:-output}; TAG=${TAG:-paper}
DATASET=$1; shift
source "$(dirname "$0")/../finished.sh"
for SHOTS in 1 2 4 8 16; do
  case $DATASET:$SHOTS in imagenet:*) CFG=vit_b16_fewshot_imagenet_ep20;; *:1) CFG=vit_b16_fewshot_ep30;;
    *:2|*:4) CFG=vit_b16_fewshot_ep50;; *) CFG=vit_b16_fewshot_ep80;; esac
  for SEED in 1 2 3; do
    DIR=$OUT/$DATASET/ALIGN/${CFG}_${SHOTS}shots/$TAG/seed$SEED
    if finished "$DIR"; then echo "Results are available in $DIR, skipping"; continue; fi
    python train.py --root "$DATA" --seed $SEED --trainer ALIGN \
      --dataset-config-file configs/datasets/$DATASET.yaml --config-file configs/trainers/ALIGN/$CFG.yaml \
      --output-dir "$DIR" DATASET.NUM_SHOTS $SHOTS "$@"
  done
done
