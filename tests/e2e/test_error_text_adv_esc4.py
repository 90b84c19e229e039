"""What the adversary of esc4 found in the text a terminal is given:

1. `phx archive` put a snapshot's name raw into the command it tells the user to copy
   (`cd phoenix-NAME && sha256sum -c SHA256SUMS`): a planted snapshot's name holding `; cmd` or
   `$(cmd)` ran that command in the shell of a user who pasted the line.
2. The `sqlite3` command a restore over a live WAL database says to run held the database's path
   unquoted.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import subprocess
import tarfile
from pathlib import Path

from e2e_support import Sandbox

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _plant(sb: Sandbox, name: str) -> str:
    """A snapshot of the repository's latest tree named `name`, as a hostile repository holds it."""
    from phoenix_backup.config import load_config
    from phoenix_backup.ops.context import Environment, open_repository

    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        repo.load_index()
        return repo.save_snapshot(dataclasses.replace(repo.find_snapshot("latest"), name=name))
    finally:
        repo.close()


def test_an_archives_command_to_copy_runs_nothing_a_snapshot_name_holds(backed_up: Sandbox) -> None:
    """A snapshot's name is any printable text without a slash (`snapshot._snapshot_name`): the
    command `phx archive` prints must hand it to the shell as one word."""
    sb = backed_up
    name = "x;touch pwned;echo $(touch pwned2) `touch pwned3`"
    planted = _plant(sb, name)
    out = sb.phx_here("archive", planted[:12], "--output", sb.root / "shell.tar.gz").out
    assert CONTROL.search(out) is None, repr(out)
    lines = out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("check it after extraction: cd "), out
    snippet = lines[1].removeprefix("check it after extraction: ")
    where = sb.root / "extracted"
    where.mkdir()
    with tarfile.open(sb.root / "shell.tar.gz") as tar:
        tar.extractall(where, filter="data")
    assert (where / f"phoenix-{name}" / "SHA256SUMS").is_file()
    run = subprocess.run(["bash", "-c", snippet], cwd=where, capture_output=True, text=True, timeout=60)
    assert sorted(p.name for p in where.iterdir()) == [f"phoenix-{name}"], snippet  # no pwned*
    assert run.returncode == 0 and run.stdout.count(": OK\n") >= 1, run


def test_the_sqlite3_command_a_restore_gives_runs_nothing_a_database_name_holds(tmp_path: Path) -> None:
    """2. A restore over a live WAL database of another page size says which `sqlite3` command to
    run; a database named `a;touch pwned;b.db` (a name from the snapshot, in the workspace) made that
    command run `touch pwned`. The name is one word of it now, and the command works."""
    from phoenix_backup.sinks.sqlite_live import page_size_problem, probe

    real = tmp_path / "a;touch pwned;echo $(touch pwned2).db"
    con = sqlite3.connect(real)
    con.execute("PRAGMA page_size=4096")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t(a)")
    con.commit()
    con.close()
    message = page_size_problem("workspace/x.db", probe(str(real)), 8192, str(real))
    assert message is not None
    command = re.search(r"run `([^`]*)`", message)
    assert command is not None, message
    run = subprocess.run(["bash", "-c", command[1]], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == [real.name], command[1]  # no pwned*
    assert run.returncode == 0 and run.stdout.strip() == "delete", run
