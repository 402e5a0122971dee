#!/bin/bash
# Zero-shot CLIP with the interface of CoOp's scripts/coop/zeroshot.sh:
#   bash scripts/coop/zeroshot.sh DATASET CFG [KEY VALUE ...]    e.g. eurosat vit_b16   ($OUT/ZeroshotCLIP/CFG/DATASET)
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET CFG [KEY VALUE ...]" >&2; exit 2; }
sweep zeroshot --trainers ZeroshotCLIP --datasets "$1" --config "$2" -- "${@:3}"
