#!/bin/bash
# CoOp few-shot with the interface of CoOp's scripts/coop/main.sh:
#   bash scripts/coop/main.sh DATASET CFG CTP NCTX SHOTS CSC [KEY VALUE ...]     e.g. caltech101 rn50 end 16 16 False
# Seeds 1-3 into $OUT/${DATASET}/CoOp/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED}. A finished run is
# skipped, an interrupted one resumes. The paper's whole protocol (configs per shot count): scripts/coop/fewshot.sh.
source "$(dirname "$0")/../_sweep.sh"
[ $# -ge 6 ] || { echo "usage: $0 DATASET CFG CTP NCTX SHOTS CSC [KEY VALUE ...]" >&2; exit 2; }
sweep fewshot --trainers CoOp --datasets "$1" --config "$2" --param ctp="$3" --param nctx="$4" --shots "$5" \
  --param csc="$6" -- "${@:7}"
