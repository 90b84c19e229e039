#!/bin/sh
# Install what the benchmark needs (restic, borg, zstd, GNU time; matplotlib in the venv), then
# run it: bench/run.sh --size medium --days 7   (all arguments go to bench/run.py)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
venv=${PHX_VENV:-$repo/.venv}
python=$venv/bin/python

need=""
command -v restic >/dev/null 2>&1 || need="$need restic"
command -v borg >/dev/null 2>&1 || need="$need borgbackup"
command -v zstd >/dev/null 2>&1 || need="$need zstd"
[ -x /usr/bin/time ] || need="$need time"
if [ -n "$need" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing:$need" >&2
    $sudo apt-get install -y $need || { $sudo apt-get update && $sudo apt-get install -y $need; }
fi
if [ ! -x "$python" ]; then
    echo "no virtualenv at $venv; create it (python3.11 -m venv .venv && .venv/bin/pip install -e .) or set PHX_VENV" >&2
    exit 2
fi
"$python" -c "import phoenix_backup" 2>/dev/null || "$python" -m pip install -e "$repo"
"$python" -c "import matplotlib" 2>/dev/null || "$python" -m pip install matplotlib
exec "$python" "$here/run.py" "$@"
