#!/bin/bash
# PLOT few-shot (RN50), shots 1/2/4/8/16 x seeds 1-3: bash scripts/plot/fewshot.sh DATASET [N] [KEY VALUE ...]
# Same as scripts/plot/main.sh DATASET N (N defaults to 4); see there for epochs, batch and folders.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 1 ] || { echo "usage: $0 DATASET [N] [KEY VALUE ...]" >&2; exit 2; }
DATASET=$1; shift
N=4
if [ $# -gt 0 ] && [[ $1 != *.* ]]; then N=$1; shift; fi
sweep fewshot --trainers PLOT --datasets "$DATASET" --param n="$N" -- "$@"
