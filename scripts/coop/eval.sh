#!/bin/bash
# CoOp distribution shift with the interface of CoOp's scripts/coop/eval.sh:
#   bash scripts/coop/eval.sh DATASET CFG [KEY VALUE ...]        e.g. imagenetv2 vit_b16_ep50
# Evaluates the ImageNet prompts (16 shots, M=16, end, seeds 1-3, CoOp's folders) on DATASET, loading the last
# epoch; unlike the reference it first trains them on ImageNet if that run is not finished.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET CFG [KEY VALUE ...]" >&2; exit 2; }
sweep dg --trainers CoOp --datasets "$1" --config "$2" -- "${@:3}"
