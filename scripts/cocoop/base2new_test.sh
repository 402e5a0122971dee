#!/bin/bash
# CoCoOp base-to-new test with the interface of CoCoOp's scripts/cocoop/base2new_test.sh:
#   bash scripts/cocoop/base2new_test.sh DATASET SEED [KEY VALUE ...]
# Loads epoch 10 of the base-class training (base2new_train.sh) and evaluates it on the new classes, into
# $OUT/base2new/test_new/${DATASET}/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed${SEED}.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET SEED [KEY VALUE ...]" >&2; exit 2; }
sweep base2new --trainers CoCoOp --datasets "$1" --seeds "$2" --only eval -- "${@:3}"
