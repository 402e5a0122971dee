#!/bin/bash
# CoCoOp base-to-new training with the interface of CoCoOp's scripts/cocoop/base2new_train.sh:
#   bash scripts/cocoop/base2new_train.sh DATASET SEED [KEY VALUE ...]
# $OUT/base2new/train_base/${DATASET}/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed${SEED}. Runs from anywhere.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET SEED [KEY VALUE ...]" >&2; exit 2; }
sweep base2new --trainers CoCoOp --datasets "$1" --seeds "$2" --only train -- "${@:3}"
