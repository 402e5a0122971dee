#!/bin/bash
# Zero-shot CLIP, domain generalisation, ImageNet (16 shots, seeds 1-3) to V2/Sketch/A/R.
#   bash scripts/zsclip/dg.sh [DATASET ...] [-- KEY VALUE ...]
# Datasets default to the protocol's (configs/protocols.yaml; for xd/dg they are the targets). DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh. TRAINER=ZeroshotCLIP2 for the template ensemble.
source "$(dirname "$0")/../_sweep.sh"
datasets_then_opts "$@"
sweep dg --trainers "${TRAINER:-ZeroshotCLIP}" "${DS[@]}" "${REST[@]}"
