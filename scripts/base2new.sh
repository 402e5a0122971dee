#!/bin/bash
# Base-to-new protocol for any trainer: bash scripts/base2new.sh TRAINER CFG DATASET LOADEP [KEY VALUE ...]
#   e.g. bash scripts/base2new.sh CoCoOp vit_b16_c4_ep10_batch1_ctxv1 dtd 10
#        bash scripts/base2new.sh ALIGN vit_b16_c2_ep5_batch4_2ctx dtd 20
# For seeds 1-3: train on the base classes (16 shots; its final test is the base accuracy), then evaluate the
# saved prompts of epoch LOADEP on the new classes, in CoCoOp's folders:
#   $OUT/base2new/train_base/DATASET/shots_16/TRAINER/CFG/seedS and .../test_new/... ; then a summary with H.
# A finished run is skipped, a crashed one resumes. The protocol is configs/protocols.yaml (base2new); a trainer
# without an entry there runs with CFG and the protocol's folders. SEEDS="1" runs seed 1 only. DATA, OUT, GPUS,
# WORKERS, SWEEP_ARGS: see scripts/_sweep.sh.
source "$(dirname "$0")/_sweep.sh"
[ $# -ge 4 ] || { echo "usage: $0 TRAINER CFG DATASET LOADEP [KEY VALUE ...]" >&2; exit 2; }
seeds=()
if [ -n "${SEEDS:-}" ]; then read -r -a seeds <<< "$SEEDS"; seeds=(--seeds "${seeds[@]}"); fi
sweep base2new --trainers "$1" --config "$2" --datasets "$3" --load-epoch "$4" "${seeds[@]}" -- "${@:5}" || exit $?
case " $SWEEP_ARGS " in *" --dry-run "*|*" --status "*|*" --slurm "*) exit 0;; esac
PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -m promptot.results \
  "${OUT:-output}/base2new"
