#!/bin/bash
# Base-to-new protocol for any trainer: bash scripts/base2new.sh TRAINER CFG DATASET LOADEP [KEY VALUE ...]
#   e.g. bash scripts/base2new.sh CoCoOp vit_b16_c4_ep10_batch1_ctxv1 dtd 10
#        bash scripts/base2new.sh ALIGN vit_b16_c2_ep5_batch4_2ctx dtd 20
# For seeds 1-3: train on the base classes (16 shots; its final test is the base accuracy), then evaluate the
# saved prompts of epoch LOADEP on the new classes. Output dirs follow CoCoOp's scripts:
#   $OUT/base2new/train_base/DATASET/shots_16/TRAINER/CFG/seedS and .../test_new/... ; then a summary with H.
# Run from the repository root; DATA and OUT come from the environment (SEEDS="1" runs seed 1 only). A finished
# run is skipped, a crashed one resumes (see scripts/finished.sh).
set -e
DATA=${DATA:-/path/to/datasets}; OUT=${OUT:-output}
TRAINER=$1; CFG=$2; DATASET=$3; LOADEP=$4; shift 4
source "$(dirname "$0")/finished.sh"
for SEED in ${SEEDS:-1 2 3}; do
  TAIL=$DATASET/shots_16/$TRAINER/$CFG/seed$SEED
  BASE=$OUT/base2new/train_base/$TAIL; NEW=$OUT/base2new/test_new/$TAIL
  COMMON=(--root "$DATA" --seed $SEED --trainer $TRAINER --dataset-config-file configs/datasets/$DATASET.yaml
          --config-file configs/trainers/$TRAINER/$CFG.yaml)
  if finished "$BASE"; then echo "Base run finished in $BASE, skipping"; else
    python train.py "${COMMON[@]}" --output-dir "$BASE" DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base "$@"
  fi
  if [ -f "$NEW/results.jsonl" ]; then echo "New-class evaluation done in $NEW, skipping"; else
    python train.py "${COMMON[@]}" --output-dir "$NEW" --model-dir "$BASE" --load-epoch $LOADEP --eval-only \
      DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES new "$@"
  fi
done
python -m promptot.results "$OUT/base2new" 
