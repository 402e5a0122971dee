# Sourced by shell scripts: `finished DIR` succeeds only if DIR/results.jsonl holds a test record written after
# training (epoch > 0), i.e. the run completed; a directory left by an interrupted run is resumed, not skipped.
# (The scripts under scripts/ no longer need it: python -m promptot.sweep skips finished jobs itself.)
finished() {
  "${PYTHON:-python}" -m promptot.sweep.jobs "$1"
}
