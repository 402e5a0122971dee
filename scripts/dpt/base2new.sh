#!/bin/bash
# DPT base-to-new (train on base classes, 16 shots, seeds 1-3; test the saved prompts on new classes).
#   bash scripts/dpt/base2new.sh [DATASET ...] [-- KEY VALUE ...]
# Datasets default to the protocol's (configs/protocols.yaml; for xd/dg they are the targets). DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh.
source "$(dirname "$0")/../_sweep.sh"
datasets_then_opts "$@"
sweep base2new --trainers DPT "${DS[@]}" "${REST[@]}"
