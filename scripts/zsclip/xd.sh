#!/bin/bash
# Zero-shot CLIP, cross-dataset, prompts learned on ImageNet (16 shots, seeds 1-3) tested on the other 10.
#   bash scripts/zsclip/xd.sh [DATASET ...] [-- KEY VALUE ...]
# Datasets default to the protocol's (configs/protocols.yaml; for xd/dg they are the targets). DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh. TRAINER=ZeroshotCLIP2 for the template ensemble.
source "$(dirname "$0")/../_sweep.sh"
datasets_then_opts "$@"
sweep xd --trainers "${TRAINER:-ZeroshotCLIP}" "${DS[@]}" "${REST[@]}"
