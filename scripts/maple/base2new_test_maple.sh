#!/bin/bash
# MaPLe base-to-new test with the interface of scripts/maple/base2new_test_maple.sh: loads epoch 5 of the base-class
# training and evaluates it on the new classes, into $OUT/base2new/test_new/${DATASET}/shots_16/MaPLe/
# vit_b16_c2_ep5_batch4_2ctx/seed${SEED}:   bash scripts/maple/base2new_test_maple.sh DATASET SEED [KEY VALUE ...]
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET SEED [KEY VALUE ...]" >&2; exit 2; }
sweep base2new --trainers MaPLe --datasets "$1" --seeds "$2" --only eval -- "${@:3}"
