#!/bin/bash
# DPT cross-dataset (train on ImageNet, 16 shots, seeds 1-3; test the saved prompts on the other 10 datasets).
#   bash scripts/dpt/xd.sh [DATASET ...] [-- KEY VALUE ...]
# Datasets default to the protocol's (configs/protocols.yaml; for xd/dg they are the targets). DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh.
source "$(dirname "$0")/../_sweep.sh"
datasets_then_opts "$@"
sweep xd --trainers DPT "${DS[@]}" "${REST[@]}"
