"""Every `phx` pays its imports before doing anything: `phx --version` and a command's `--help`
load neither the config nor the repository, its keys, its storage or a database driver (they
were most of such a start's CPU: `phx --version` took 0.23 CPU-s with them, 0.14 without)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Runs `phx ARGS` as the `phx` script does, in a fresh interpreter, and prints the modules loaded.
_SCRIPT = """
import json, sys
from phoenix_backup.cli.main import main
sys.argv = ["phx", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
sys.stdout.flush()
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""

_NOT_AT_START = (
    "phoenix_backup.config",
    "phoenix_backup.repo.",
    "phoenix_backup.storage",
    "phoenix_backup.sinks",
    "phoenix_backup.sources",
    "blake3",
    "cryptography",
    "zstandard",
    "boto3",
    "botocore",
    "psycopg",
    "redis",
    "sqlite3",
)


@pytest.mark.parametrize("args", [["--version"], ["backup", "--help"]])
def test_a_start_that_reads_nothing_imports_no_config_repository_or_driver(args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHX_")}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip()  # the version, or the command's help
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    heavy = sorted(m for m in loaded if m.startswith(_NOT_AT_START))
    assert heavy == []
