#!/bin/bash
# VLP domain generalisation (train on ImageNet, 16 shots, seeds 1-3; test on ImageNetV2/-Sketch/-A/-R).
#   bash scripts/vlp/dg.sh [DATASET ...] [-- KEY VALUE ...]
# Datasets default to the protocol's (configs/protocols.yaml; for xd/dg they are the targets). DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh.
source "$(dirname "$0")/../_sweep.sh"
datasets_then_opts "$@"
sweep dg --trainers VLP "${DS[@]}" "${REST[@]}"
