#!/usr/bin/env bash
# The quick start: install Phoenix into .venv, then back up a generated sample agent workspace
# to a local repository, list, verify and restore it, and compare every file and table.
set -euo pipefail
. "$(dirname "$0")/setup.sh"
ensure_venv ""
exec "$VENV/bin/phx" demo "$@"
