#!/bin/bash
# Evaluate the ImageNet prompts of xd_train_maple.sh (epoch 2) on DATASET, with the interface of
# scripts/maple/xd_test_maple.sh:   bash scripts/maple/xd_test_maple.sh DATASET SEED [KEY VALUE ...]
# $OUT/evaluation/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/${DATASET}/seed${SEED}.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET SEED [KEY VALUE ...]" >&2; exit 2; }
sweep xd --trainers MaPLe --datasets "$1" --seeds "$2" --only eval -- "${@:3}"
