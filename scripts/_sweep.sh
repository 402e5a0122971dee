# Sourced by the scripts under scripts/: `sweep PROTOCOL ARGS... [-- KEY VALUE ...]` runs `python -m promptot.sweep`
# with this repository's promptot, so every script is a thin wrapper over configs/protocols.yaml and the runner.
# Jobs run from the repository root; relative DATA and OUT are taken from the folder the script is called from.
# Environment: DATA (dataset root; required unless dry-running), OUT (output root, default output), GPUS (e.g. 0,1:
# one job per GPU), WORKERS (CPU jobs at a time), PYTHON (interpreter, default python), SWEEP_ARGS (more runner flags,
# e.g. "--dry-run", "--preload", "--rerun-changed", "--slurm slurm_dir").
sweep() {
  local args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do args+=("$1"); shift; done
  [ $# -gt 0 ] && shift  # the "--"
  if [ $# -gt 0 ]; then set -- --opts "$@"; fi
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 2
  # shellcheck disable=SC2086  # SWEEP_ARGS holds several flags
  PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -m promptot.sweep "${args[@]}" \
    ${GPUS:+--gpus "$GPUS"} ${WORKERS:+--workers "$WORKERS"} $SWEEP_ARGS "$@"
}

# Dataset stems up to "--" (or the end) become DS=(--datasets STEM ...) (empty: the protocol's); the rest is REST.
datasets_then_opts() {
  DS=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do DS+=("$1"); shift; done
  [ ${#DS[@]} -gt 0 ] && DS=(--datasets "${DS[@]}")
  REST=("$@")
}
