"""Helpers of the safe in-place restore tests (test_safe_restore*.py): a backed-up template with a
symlink and a private folder, a gateway simulated by shell commands that record their calls, a
reader process that keeps a SQLite connection open, and the agent's day of changes.

Everything is real: `phx` runs as a subprocess, the gateway commands run through /bin/sh, and the
reader is another Python process holding its own connection.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from e2e_support import DATABASES, Sandbox, assert_same_db, assert_same_tree, db_dump

from phoenix_backup.sample import generate_workspace, layout_for, simulate_day

SEED = 11


def build_template(root: Path) -> None:
    """A tiny sample with a symlink and a private folder, and one snapshot of it."""
    layout = generate_workspace(root / "sample", size="tiny", seed=SEED)
    ws = layout.workspace
    os.symlink("MEMORY.md", ws / "memory-link.md")
    (ws / "private").mkdir()
    (ws / "private" / "diary.md").write_text("# Diary\n\nOnly for the agent.\n")
    os.chmod(ws / "private" / "diary.md", 0o600)
    os.chmod(ws / "private", 0o750)
    sb = Sandbox(root, layout)
    sb.backup()
    shutil.rmtree(sb.cache)


def copy_template(template: Path, root: Path) -> Sandbox:
    shutil.copytree(template, root, symlinks=True)
    return Sandbox(root, layout_for(root / "sample"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def change_workspace(sb: Sandbox) -> None:
    """A day of agent work plus edits the restore must undo: an edited, a deleted and a created
    file, a new folder, a retargeted symlink, a folder mode, and rows deleted, changed and added."""
    ws = sb.workspace
    simulate_day(sb.layout, 0, seed=SEED)
    (ws / "SOUL.md").write_text("# SOUL\n\nRewritten by a confused agent.\n")
    (ws / "TOOLS.md").unlink()
    (ws / "projects").mkdir()
    (ws / "projects" / "phoenix.md").write_text("# Phoenix\n\nA new project.\n")
    (ws / "memory-link.md").unlink()
    os.symlink("SOUL.md", ws / "memory-link.md")
    os.chmod(ws / "private", 0o700)
    change_tasks(sb.layout.dashboard_db)


def change_tasks(db: Path) -> None:
    """3 tasks deleted, 2 retitled, 1 added: a restore adds 3 rows back, removes 1 and changes 2."""
    con = sqlite3.connect(db)
    try:
        ids = [r[0] for r in con.execute("SELECT id FROM tasks ORDER BY id LIMIT 5")]
        con.execute(f"DELETE FROM tasks WHERE id IN ({ids[0]}, {ids[1]}, {ids[2]})")
        con.execute(f"UPDATE tasks SET title = title || ' (renamed)' WHERE id IN ({ids[3]}, {ids[4]})")
        con.execute(
            "INSERT INTO tasks(title, description, status, priority, project, assignee, created_at, updated_at) "
            "VALUES ('new task', 'made after the backup', 'pending', 'low', NULL, 'argent', '2026-10-01', '2026-10-01')"
        )
        con.commit()
    finally:
        con.close()


def assert_state(expected: dict[str, Any], actual: dict[str, Any], what: str) -> None:
    """Workspace (files, folders, links with modes and times) and every database's rows."""
    assert_same_tree(expected["workspace"], actual["workspace"], f"{what}: workspace")
    for db in DATABASES:
        assert_same_db(expected["databases"][db], actual["databases"][db], f"{what}: {db}")


# -- the gateway, simulated ------------------------------------------------------------------


def install_gateway(
    sb: Sandbox, log: Path, *, stop: str | None = None, start: str | None = None, timeout: float = 10
) -> None:
    """gateway.stop/start that append `stop <sha256 of SOUL.md>` / `start <sha256>` to `log`: the
    hash shows whether the command ran before or after the restore wrote the files."""
    soul = shlex.quote(str(sb.workspace / "SOUL.md"))
    q = shlex.quote(str(log))

    def record(word: str) -> str:
        return f'printf "{word} %s\\n" "$(sha256sum {soul} | cut -c1-64)" >> {q}'

    sb.write_config(
        gateway={
            "stop": stop if stop is not None else record("stop"),
            "start": start if start is not None else record("start"),
            "timeoutSeconds": timeout,
        }
    )


def gateway_calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# -- a reader holding a database open ----------------------------------------------------------

READER = textwrap.dedent(
    """
    import hashlib, sqlite3, sys
    con = sqlite3.connect(sys.argv[1], timeout=30)
    def summary():
        rows = con.execute("SELECT * FROM observations ORDER BY id").fetchall()
        return f"{len(rows)} {hashlib.sha256(repr(rows).encode()).hexdigest()}"
    print(summary(), flush=True)
    for _ in sys.stdin:
        print(summary(), flush=True)
    """
)


def observations_summary(db: Path) -> str:
    """What the reader prints, computed with a fresh connection."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT * FROM observations ORDER BY id").fetchall()
    finally:
        con.close()
    return f"{len(rows)} {hashlib.sha256(repr(rows).encode()).hexdigest()}"


class Reader:
    """Another process with one connection to a database, opened once and never reopened."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.first = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, f"the reader died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return line

    def summary(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def db_rows(sb: Sandbox) -> dict[str, Any]:
    return {db: db_dump(sb.db_path(db)) for db in DATABASES}
