#!/usr/bin/env bash
# Set up a fresh machine: Fashion-MNIST images (Debian package, for the mini CLIP and its datasets),
# a virtual environment in .venv, and promptot with its dependencies (torch pinned by constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null ||
      echo "WARNING: could not install dataset-fashion-mnist; the Fashion-MNIST default and its tests will be unavailable." >&2
  else
    echo "NOTE: run 'sudo apt-get install dataset-fashion-mnist' for the Fashion-MNIST default (or set PROMPTOT_FMNIST_DIR)." >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
echo "promptot installed in $(pwd)/.venv"
