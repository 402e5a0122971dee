#!/bin/bash
# PLOT++ stage 1 (visual prompts only, seed 1) with the interface of plot-pp/scripts/main_visiononly.sh:
#   bash scripts/plotpp/main_visiononly.sh DATASET M [KEY VALUE ...]
# Shots 1/2/4/8/16 (epochs 50/100/100/200/200, ImageNet 50) into
# $OUT/output_visiononly/OP_N4/${DATASET}/PLOTPP/vit_b16_visiononly_${SHOTS}shots/nctx4_cscFalse_ctpend/seed1.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET M [KEY VALUE ...]" >&2; exit 2; }
sweep fewshot --trainers PLOTPP --datasets "$1" --param m="$2" --stage visiononly -- "${@:3}"
