#!/bin/bash
# DPT's VPT baseline (appended prompts, vit_b32_deep_dpt) domain generalisation (train on ImageNet, 16 shots, seeds 1-3; test on ImageNetV2/-Sketch/-A/-R).
#   bash scripts/vpt/dg_dpt.sh [DATASET ...] [-- KEY VALUE ...]
# Datasets default to the protocol's (configs/protocols.yaml; for xd/dg they are the targets). DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh.
source "$(dirname "$0")/../_sweep.sh"
datasets_then_opts "$@"
sweep dg --trainers VPT_DPT "${DS[@]}" "${REST[@]}"
