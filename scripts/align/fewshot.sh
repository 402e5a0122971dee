#!/bin/bash
# ALIGN few-shot (ViT-B/16), shots 1/2/4/8/16 x seeds 1-3: bash scripts/align/fewshot.sh DATASET [KEY VALUE ...]
# Epochs follow the reference train.py: 1 shot 30, 2/4 shots 50, 8/16 shots 80, ImageNet 20.
# $OUT/${DATASET}/ALIGN/${CFG}_${SHOTS}shots/${TAG}/seed${SEED}; TAG (default paper) names the variant, e.g.
# TAG=reference bash scripts/align/fewshot.sh dtd TRAINER.ALIGN.COMPAT reference TRAINER.ALIGN.STOP reference
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 1 ] || { echo "usage: $0 DATASET [KEY VALUE ...]" >&2; exit 2; }
sweep fewshot --trainers ALIGN --datasets "$1" --param tag="${TAG:-paper}" -- "${@:2}"
