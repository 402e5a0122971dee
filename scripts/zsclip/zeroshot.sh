#!/bin/bash
# Zero-shot CLIP, hand-crafted prompts on every dataset, no training.
#   bash scripts/zsclip/zeroshot.sh [DATASET ...] [-- KEY VALUE ...]
# Datasets default to the protocol's (configs/protocols.yaml; for xd/dg they are the targets). DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh. TRAINER=ZeroshotCLIP2 for the template ensemble.
source "$(dirname "$0")/../_sweep.sh"
datasets_then_opts "$@"
sweep zeroshot --trainers "${TRAINER:-ZeroshotCLIP}" "${DS[@]}" "${REST[@]}"
