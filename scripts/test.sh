#!/usr/bin/env bash
# Everything the tests need, installed, then every check: ruff, mypy, and the whole pytest suite
# (unit, integration against real services, end-to-end through the `phx` command).
set -euo pipefail
. "$(dirname "$0")/setup.sh"
cd "$ROOT"
apt_install gpg:gnupg sqlite3:sqlite3 runuser:util-linux setpriv:util-linux
ensure_venv "[test]"
"$VENV/bin/ruff" check src tests
"$VENV/bin/ruff" format --check src tests
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
