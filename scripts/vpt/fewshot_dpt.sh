#!/bin/bash
# DPT's VPT baseline (appended prompts, vit_b32_deep_dpt) few-shot (shots 1/2/4/8/16 x seeds 1-3).
#   bash scripts/vpt/fewshot_dpt.sh [DATASET ...] [-- KEY VALUE ...]
# Datasets default to the protocol's (configs/protocols.yaml; for xd/dg they are the targets). DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh.
source "$(dirname "$0")/../_sweep.sh"
datasets_then_opts "$@"
sweep fewshot --trainers VPT_DPT "${DS[@]}" "${REST[@]}"
