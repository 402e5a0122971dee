#!/bin/bash
# PLOT few-shot (RN50), shots 1/2/4/8/16 x seeds 1-3: bash scripts/plot/fewshot.sh DATASET [N] [KEY VALUE ...]
# Run from the repository root; DATA (dataset root) and OUT (default output) may be set in the environment.
# Epochs follow the reference: 1 shot 50, 2/4 shots 100, 8/16 shots 200, ImageNet 50 (with the global logit);
# train batch 32 for Flowers, Aircraft and Cars (hard-coded in the reference train.py), 128 otherwise.
set -e
DATA=${DATA:-/path/to/datasets}; OUT=${OUT:-output}
DATASET=$1; N=${2:-4}; shift $(( $# < 2 ? $# : 2 ))
source "$(dirname "$0")/../finished.sh"
case $DATASET in oxford_flowers|fgvc_aircraft|stanford_cars) BATCH=(DATALOADER.TRAIN_X.BATCH_SIZE 32);; *) BATCH=();; esac
for SHOTS in 1 2 4 8 16; do
  case $DATASET:$SHOTS in imagenet:*) CFG=rn50_imagenet;; *:1) CFG=rn50_ep50;; *:2|*:4) CFG=rn50_ep100;; *) CFG=rn50;; esac
  for SEED in 1 2 3; do
    DIR=$OUT/$DATASET/PLOT/${CFG}_${SHOTS}shots/nctx16_N${N}/seed$SEED
    if finished "$DIR"; then echo "Results are available in $DIR, skipping"; continue; fi
    python train.py --root "$DATA" --seed $SEED --trainer PLOT \
      --dataset-config-file configs/datasets/$DATASET.yaml --config-file configs/trainers/PLOT/$CFG.yaml \
      --output-dir "$DIR" TRAINER.PLOT.N $N DATASET.NUM_SHOTS $SHOTS "${BATCH[@]}" "$@"
  done
done
