#!/usr/bin/env bash
# Install discovery and what it needs on a fresh machine (Debian/Ubuntu; root or sudo for apt).
#   bash scripts/install.sh          # the tool
#   bash scripts/install.sh --dev    # plus test tools, TRL, a headless browser
#
# Everything goes into a virtual environment: the active one ($VIRTUAL_ENV), or else
# $DISCOVERY_VENV (default: .venv in this checkout), created with $PYTHON (default python3).
# A stock Debian/Ubuntu python3 is "externally managed" (PEP 668) and refuses a plain
# `pip install`; a venv is the supported way. Without an active venv, the `discovery`
# command is linked into /usr/local/bin (root) or ~/.local/bin, so nothing needs activating.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
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

# ---------------------------------------------------------------- the virtual environment
LINK_COMMAND=1
if [[ -n "${VIRTUAL_ENV:-}" && -x "${VIRTUAL_ENV}/bin/python" ]]; then
  VENV=$VIRTUAL_ENV
  LINK_COMMAND=0
else
  VENV=${DISCOVERY_VENV:-$ROOT/.venv}
  if [[ ! -x "$VENV/bin/python" ]]; then
    command -v "$PY" >/dev/null || { echo "install: no $PY found; set PYTHON=/path/to/python3 (3.10 or newer)" >&2; exit 2; }
    # keep a CUDA build of torch that the chosen interpreter already has (conda, a GPU image)
    SYSTEM_SITE=()
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
      SYSTEM_SITE=(--system-site-packages)
      echo "install: reusing the CUDA build of torch that $PY has" >&2
    fi
    if ! "$PY" -m venv "${SYSTEM_SITE[@]}" "$VENV" 2>/dev/null; then
      # Debian/Ubuntu ship venv's pip bootstrap separately (python3-venv / python3.X-venv)
      rm -rf "$VENV"
      minor=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
      apt_install "python${minor}-venv" || apt_install python3-venv
      "$PY" -m venv "${SYSTEM_SITE[@]}" "$VENV"
    fi
  fi
fi
VPY="$VENV/bin/python"
pip_install() { "$VPY" -m pip install --quiet "$@"; }

# torch: keep a CUDA build a GPU user already has; otherwise take the CPU wheel, never the multi-GB CUDA one
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null; then
    pip_install torch
  else
    # a CPU wheel of 2.13.0 is found locally here (pip's find-links); elsewhere install torch's CPU build first
    pip_install "torch==2.13.0"
  fi
fi

if [[ $DEV -eq 1 ]]; then
  # the dashboard's browser test drives Debian's Chromium through playwright (never `playwright install`)
  command -v chromium >/dev/null || apt_install chromium
  pip_install -e ".[dev]"
else
  pip_install -e .
fi

# ---------------------------------------------------------------- the command on PATH
BIN="$VENV/bin/discovery"
if [[ $LINK_COMMAND -eq 1 ]]; then
  if [[ $(id -u) -eq 0 ]]; then LINK_DIR=/usr/local/bin; else LINK_DIR="$HOME/.local/bin"; fi
  mkdir -p "$LINK_DIR"
  ln -sf "$BIN" "$LINK_DIR/discovery"
  case ":$PATH:" in
    *":$LINK_DIR:"*) ;;
    *) echo "note: $LINK_DIR is not on PATH; run $BIN, or add $LINK_DIR to PATH" >&2 ;;
  esac
  BIN="$LINK_DIR/discovery -> $VENV/bin/discovery"
fi
echo "discovery installed: $BIN (python: $VPY)"
