#!/bin/bash
# Zero-shot CLIP, base-to-new, train on base classes (16 shots, seeds 1-3) then test on new.
#   bash scripts/zsclip/base2new.sh [DATASET ...] [-- KEY VALUE ...]
# Datasets default to the protocol's (configs/protocols.yaml; for xd/dg they are the targets). DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh. TRAINER=ZeroshotCLIP2 for the template ensemble.
source "$(dirname "$0")/../_sweep.sh"
datasets_then_opts "$@"
sweep base2new --trainers "${TRAINER:-ZeroshotCLIP}" "${DS[@]}" "${REST[@]}"
