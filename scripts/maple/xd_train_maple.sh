#!/bin/bash
# MaPLe on ImageNet for cross-dataset and DG, with the interface of scripts/maple/xd_train_maple.sh:
#   bash scripts/maple/xd_train_maple.sh imagenet SEED [KEY VALUE ...]
# $OUT/imagenet/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots/seed${SEED} (2 epochs, prompt depth 3).
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 imagenet SEED [KEY VALUE ...]" >&2; exit 2; }
sweep xd --trainers MaPLe --source "$1" --seeds "$2" --only train -- "${@:3}"
