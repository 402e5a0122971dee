#!/bin/bash
# PLOT few-shot with the interface of plot-coop/scripts/main.sh: bash scripts/plot/main.sh DATASET N [KEY VALUE ...]
# Shots 1/2/4/8/16 x seeds 1-3 with the epochs the reference sets per shot (50/100/100/200/200, ImageNet 50) and
# its train batch of 32 for Flowers, Aircraft and Cars; $OUT/OP_N${N}/${DATASET}/PLOT/${CFG}_${SHOTS}shots/
# nctx16_cscFalse_ctpend/seed${SEED}, CFG being the config of that shot count.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET N [KEY VALUE ...]" >&2; exit 2; }
sweep fewshot --trainers PLOT --datasets "$1" --param n="$2" -- "${@:3}"
