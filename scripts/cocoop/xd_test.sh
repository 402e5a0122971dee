#!/bin/bash
# Evaluate the ImageNet prompts of xd_train.sh on DATASET (any target, ImageNet variants included), with the
# interface of CoCoOp's scripts/cocoop/xd_test.sh:
#   bash scripts/cocoop/xd_test.sh DATASET SEED [KEY VALUE ...]
# $OUT/evaluation/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/${DATASET}/seed${SEED}, loading epoch 10.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET SEED [KEY VALUE ...]" >&2; exit 2; }
sweep xd --trainers CoCoOp --datasets "$1" --seeds "$2" --only eval -- "${@:3}"
