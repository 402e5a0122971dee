#!/bin/bash
# MaPLe base-to-new training with the interface of scripts/maple/base2new_train_maple.sh (multimodal-prompt-learning):
#   bash scripts/maple/base2new_train_maple.sh DATASET SEED [KEY VALUE ...]
# $OUT/base2new/train_base/${DATASET}/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed${SEED}. A finished run is skipped.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET SEED [KEY VALUE ...]" >&2; exit 2; }
sweep base2new --trainers MaPLe --datasets "$1" --seeds "$2" --only train -- "${@:3}"
