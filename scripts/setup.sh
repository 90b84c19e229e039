#!/usr/bin/env bash
# Shared by scripts/demo.sh and scripts/test.sh: a virtualenv in .venv with Phoenix installed,
# and the Debian packages a step needs. Safe to run again; installs only what is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

apt_install() {
  # Install Debian packages whose command is missing: apt_install cmd:package ...
  local missing=()
  for pair in "$@"; do
    local cmd="${pair%%:*}" pkg="${pair##*:}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_get_install "${missing[@]}"
}

apt_get_install() {
  # Install these Debian packages (as root, or through sudo).
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
      echo "phx setup: please install: $* (apt-get install $*)" >&2; return 1
    fi
  else SUDO=""; fi
  echo "phx setup: installing $*" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
  # ensure_venv EXTRAS [PIP_OPTIONS...]: Phoenix with EXTRAS (say "[test,docs]") installed in .venv.
  local extras="$1"
  shift
  if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "phx setup: Python 3.11 or newer is needed ($PYTHON is older)" >&2; return 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
      # Debian splits venv out of the interpreter package.
      apt_get_install python3-venv
      rm -rf "$VENV"
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q "$@" -e "$ROOT$extras"
}
