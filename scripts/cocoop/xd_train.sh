#!/bin/bash
# CoCoOp on ImageNet (16 shots, all classes) for cross-dataset and DG, with the interface of scripts/cocoop/xd_train.sh:
#   bash scripts/cocoop/xd_train.sh SEED [KEY VALUE ...]    ($OUT/imagenet/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1_16shots/seedSEED)
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 1 ] || { echo "usage: $0 SEED [KEY VALUE ...]" >&2; exit 2; }
sweep xd --trainers CoCoOp --seeds "$1" --only train -- "${@:2}"
