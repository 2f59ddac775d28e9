#!/usr/bin/env bash
# Install discovery and what it needs on a fresh machine (Debian/Ubuntu; root or sudo for apt).
#   bash scripts/install.sh          # the tool
#   bash scripts/install.sh --dev    # plus test tools, a headless browser and the Docker engine
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3}

SUDO=""
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null; then SUDO="sudo"; fi
apt_install() {
  if command -v apt-get >/dev/null && { [[ $(id -u) -eq 0 ]] || [[ -n "$SUDO" ]]; }; then
    if [[ ! -f /tmp/.discovery-apt-updated ]]; then $SUDO apt-get update -q >/dev/null && touch /tmp/.discovery-apt-updated; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >/dev/null
  else
    echo "note: cannot apt-get install $* (not root, no sudo); the sandbox will say what is missing" >&2
  fi
}

# bubblewrap is the sandbox's filesystem and network wall
command -v bwrap >/dev/null || apt_install bubblewrap

# torch: keep a CUDA build a GPU user already has; otherwise take the CPU wheel, never the multi-GB CUDA one
if ! $PY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null; then
    $PY -m pip install --quiet torch
  else
    # a CPU wheel of 2.13.0 is found locally here (pip's find-links); elsewhere install torch's CPU build first
    $PY -m pip install --quiet "torch==2.13.0"
  fi
fi

if [[ $DEV -eq 1 ]]; then
  # the dashboard's browser test drives Debian's Chromium through playwright (never `playwright install`)
  command -v chromium >/dev/null || apt_install chromium
  $PY -m pip install --quiet -e ".[dev]"
else
  $PY -m pip install --quiet -e .
fi
echo "discovery installed: $(command -v discovery)"
