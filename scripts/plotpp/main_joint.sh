#!/bin/bash
# PLOT++ stage 2 (text + visual prompts, seeds 1-3, each from the stage-1 checkpoint) with the interface of
# plot-pp/scripts/main_joint.sh: bash scripts/plotpp/main_joint.sh DATASET M [KEY VALUE ...]
# Needs main_visiononly.sh DATASET M first (no PRETRAIN_DIR to edit: the stage-1 folder follows from the protocol);
# $OUT/output_joint/OP_N4/${DATASET}/PLOTPP/vit_b16_joint_${SHOTS}shots/nctx4_cscFalse_ctpend/seed${SEED}.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 2 ] || { echo "usage: $0 DATASET M [KEY VALUE ...]" >&2; exit 2; }
sweep fewshot --trainers PLOTPP --datasets "$1" --param m="$2" --stage joint -- "${@:3}"
