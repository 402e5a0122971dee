#!/bin/bash
# CoPL's zero-shot transfer protocol: train on Caltech-101 (all 100 classes, 16 shots) and evaluate the learned prompts
# on the other ten datasets. bash scripts/copl/xd_caltech101.sh [TRAINER [CFG [LOADEP]]] [-- KEY VALUE ...]
#   defaults: CoPL vit_b16_c4_ep10_batch1_ctxv1 10; any trainer with transferable prompts works (e.g. CoCoOp).
# Seeds 1-3. Output dirs follow CoCoOp's cross-dataset scripts: $OUT/caltech101/TRAINER/CFG_16shots/seedS (training)
# and $OUT/evaluation/TRAINER/CFG_16shots/DATASET/seedS; a summary follows. The shot count of the paper's protocol is
# not known (16 shots is CoCoOp's ImageNet-source protocol). The protocol is xd_caltech101 in configs/protocols.yaml;
# DATA, OUT, GPUS, WORKERS, SWEEP_ARGS: see scripts/_sweep.sh. A finished run is skipped, a crashed one resumes.
source "$(dirname "$0")/../_sweep.sh"
TRAINER=CoPL; CFG=vit_b16_c4_ep10_batch1_ctxv1; LOADEP=10
[ $# -gt 0 ] && [ "$1" != "--" ] && { TRAINER=$1; shift; }
[ $# -gt 0 ] && [ "$1" != "--" ] && { CFG=$1; shift; }
[ $# -gt 0 ] && [ "$1" != "--" ] && { LOADEP=$1; shift; }
[ "$1" == "--" ] && shift
sweep xd_caltech101 --trainers "$TRAINER" --config "$CFG" --load-epoch "$LOADEP" -- "$@" || exit $?
case " $SWEEP_ARGS " in *" --dry-run "*|*" --status "*|*" --slurm "*) exit 0;; esac
OUT=${OUT:-output}
for ROOT in "$OUT/caltech101/$TRAINER/${CFG}_16shots" "$OUT/evaluation/$TRAINER/${CFG}_16shots"; do
  PYTHONPATH="$(cd "$(dirname "$0")/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -m promptot.results \
    "$ROOT"
done
